//go:build tools

// Package etcd only records the upstream etcd server command (the main package at the root of
// go.etcd.io/etcd/server/v3) so that `go mod tidy` keeps its modules in go.mod and go.sum.
package etcd

import (
	_ "go.etcd.io/etcd/server/v3"
)
