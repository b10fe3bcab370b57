"""The local endpoint: DJL Serving's HTTP surface and the SageMaker runtime API, in one process, and `run`, what
`lmi serve` starts."""
