"""lmikit: host-side toolkit for LMI handlers: local endpoint, streaming client, build and deploy."""
