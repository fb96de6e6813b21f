//! Test kit: real etcd, PostgreSQL and MariaDB servers in temp dirs on free loopback ports.
