"""`/metrics` after real traffic through `lmi serve`, parsed with prometheus_client's own parser: the counts match the
requests sent and the tokens they streamed, and the prefix cache's figures show the repeated prompt's hits."""

from __future__ import annotations

import json

import pytest
from lmikit.client.runtime_client import runtime_client
from lmikit.embedded_model import ensure_tiny_model
from local_endpoint import connection, make_project, serve
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.integration

PROPERTIES = """engine=Python
option.rolling_batch=custom
option.output_formatter=jsonlines
option.max_rolling_batch_size=4
"""
#: a prompt of a few full blocks, sent three times: the second and third find them cached
REPEATED = "Hello, my name is Ada and I like to write programs for the analytical engine. " * 3


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_count_the_traffic_sent(tmp_path) -> None:
    project = make_project(tmp_path / "project", PROPERTIES)
    with serve(project, "--model-id", str(ensure_tiny_model())) as server:
        tokens = 0
        for max_new_tokens in (3, 5, 7):
            conn = connection(server)
            conn.request(
                "POST",
                "/invocations",
                json.dumps({"inputs": REPEATED, "parameters": {"max_new_tokens": max_new_tokens}}),
                {"Content-Type": "application/json"},
            )
            tokens += len(conn.getresponse().read().splitlines())
        for _ in range(2):
            conn = connection(server)
            conn.request(
                "POST",
                "/invocations",
                json.dumps({"inputs": "x", "parameters": {"top_k": -1}}),
                {"Content-Type": "application/json"},
            )
            assert conn.getresponse().status == 400
        events = runtime_client(server.url).invoke_endpoint_with_response_stream(
            EndpointName="local",
            ContentType="application/json",
            Body=json.dumps({"inputs": "Roses are", "parameters": {"max_new_tokens": 4}}),
        )["Body"]
        tokens += sum(len(event["PayloadPart"]["Bytes"].splitlines()) for event in events)
        conn = connection(server)
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        assert response.status == 200 and response.getheader("Content-Type").startswith("text/plain")
        samples = _samples(response.read().decode())
    assert samples[("lmi_requests_total", (("route", "invocations"), ("status", "200")))] == 3
    assert samples[("lmi_requests_total", (("route", "invocations"), ("status", "400")))] == 2
    assert samples[("lmi_requests_total", (("route", "runtime"), ("status", "200")))] == 1
    assert samples[("lmi_tokens_out_total", ())] == tokens == 3 + 5 + 7 + 4
    assert samples[("lmi_time_to_first_token_seconds_count", ())] == 4
    assert samples[("lmi_inter_token_latency_seconds_count", ())] == tokens - 4
    assert samples[("lmi_requests_in_flight", ())] == 0
    assert samples[("lmi_batch_occupancy", ())] == 0
    assert 0 < samples[("lmi_prefix_cache_hit_rate", ())] < 1
    assert samples[("lmi_prefix_cache_bytes", ())] > 0
