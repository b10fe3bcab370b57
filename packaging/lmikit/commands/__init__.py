"""The AWS lifecycle commands of `lmi`, one module per group: `build`, `deploy` (deploy and update) and `endpoints`
(status, logs, delete), and `serve`; cli.py registers them. The other commands live beside the work they do
(invoke, chat).

Progress and status go to stderr; stdout carries only the result (archive path, endpoint name), so
`EP=$(lmi deploy ...)` works in scripts.
"""
