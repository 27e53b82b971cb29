"""Test harness pieces shared by several test packages: local HTTP servers and managed processes."""
