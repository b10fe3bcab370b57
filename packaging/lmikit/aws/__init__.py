"""The AWS side of `lmi`: SageMaker's deploy lifecycle on boto3 (lifecycle), the instances' GPUs (instances), what
`lmi status` shows (endpoint_status), inference components (components), autoscaling and CloudWatch logs
(endpoint_logs)."""
