"""The commands of `lmi`, one module per command or group: `serve`, `demo`, `invoke`, `chat`, and the AWS lifecycle's
`build`, `deploy` (deploy and update) and `endpoints` (status, logs, delete); cli.py registers them. Each reads its
options and calls the package that does the work.

The lifecycle commands send progress and status to stderr; stdout carries only the result (archive path, endpoint
name), so `EP=$(lmi deploy ...)` works in scripts.
"""
