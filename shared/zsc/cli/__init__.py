"""The `zsc` command line: servers (serve, up, down, health) and one client command per user-facing RPC."""
