// Package invm holds tests that run inside a lab VM, where the kernel has
// nbd.ko: the lab builds them with "go test -c" into the initramfs as
// /usr/local/bin/invm.test and the host-side lab tests run that binary with
// DRBDD_IN_VM=1. Anywhere else they skip.
package invm
