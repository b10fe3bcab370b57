"""vLLM's own offline generation (`LLM.generate`) as the reference the vLLM engine's answers must equal.

`offline_generate` runs this file as a script in a child process, so the reference `LLM` (and the engine-core process
vLLM starts for it) is gone before the tests load the handler's engine: requests in as JSON on stdin, one result per
request out as JSON in a file (vLLM logs to stdout).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

#: the engine settings the tests give the handler too, so that both load the same model the same way
LOAD = {"dtype": "float32", "enforce_eager": True, "kv_cache_memory_bytes": 1 << 30}
TIMEOUT_S = 600


@dataclass(frozen=True)
class Offline:
    """vLLM's answer to one request: its tokens, its own text, and for greedy requests the smallest gap between the
    chosen token's log-probability and the runner-up's (a near tie could flip between two batch layouts)."""

    token_ids: tuple[int, ...]
    text: str
    finish_reason: str
    margin: float | None
    #: per token, the most likely tokens as (id, log-probability) by rank, where the request gave `logprobs`
    top: tuple[tuple[tuple[int, float], ...], ...] = ()
    #: per prompt token, its log-probability (the first None), where the request gave `prompt_logprobs`
    prompt: tuple[float | None, ...] = ()


def offline_generate(model_dir: Path, requests: list[dict]) -> list[Offline]:
    """Each request ({"prompt_token_ids", "max_tokens", and SamplingParams' own names, `logprobs` and
    `prompt_logprobs` included; `structured_outputs` as StructuredOutputsParams' fields}) through `LLM.generate`."""
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "answers.json"
        done = subprocess.run(
            [sys.executable, __file__, str(model_dir), str(out)],
            input=json.dumps(requests),
            text=True,
            capture_output=True,
            timeout=TIMEOUT_S,
        )
        if done.returncode != 0:
            raise RuntimeError(f"vLLM's offline generation failed:\n{done.stderr[-4000:]}")
        answers = json.loads(out.read_text())
    return [
        Offline(
            tuple(r["token_ids"]),
            r["text"],
            r["finish_reason"],
            r["margin"],
            tuple(tuple((i, lp) for i, lp in top) for top in r["top"]),
            tuple(r["prompt"]),
        )
        for r in answers
    ]


def _margin(logprobs: list[dict]) -> float:
    gaps = []
    for entry in logprobs:
        top = sorted((value.logprob for value in entry.values()), reverse=True)
        gaps.append(top[0] - top[1] if len(top) > 1 else float("inf"))
    return min(gaps, default=float("inf"))


def _ranked(entry: dict, count: int) -> list[tuple[int, float]]:
    ranked = sorted((value.rank, token, value.logprob) for token, value in entry.items() if value.rank <= count)
    return [(token, logprob) for _, token, logprob in ranked]


def _prompt(output) -> list[float | None]:
    if not output.prompt_logprobs:
        return []
    return [
        None if entry is None else entry[token].logprob
        for token, entry in zip(output.prompt_token_ids, output.prompt_logprobs)
    ]


def _main(model_dir: str, out: str) -> None:
    from vllm import LLM, SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    requests = json.load(sys.stdin)
    llm = LLM(model=model_dir, **LOAD)
    prompts = [{"prompt_token_ids": request.pop("prompt_token_ids")} for request in requests]
    for request in requests:
        if "structured_outputs" in request:
            request["structured_outputs"] = StructuredOutputsParams(**request["structured_outputs"])
    asked = [request.get("logprobs") or 0 for request in requests]
    params = [
        SamplingParams(**{"logprobs": 2 if request.get("temperature") == 0 else None, **request})
        for request in requests
    ]
    results = []
    for output, top in zip(llm.generate(prompts, params, use_tqdm=False), asked):
        completion = output.outputs[0]
        margin = _margin(completion.logprobs) if completion.logprobs else None
        results.append(
            {
                "token_ids": list(completion.token_ids),
                "text": completion.text,
                "finish_reason": completion.finish_reason,
                "margin": margin,
                "top": [_ranked(entry, top) for entry in completion.logprobs or ()] if top else [],
                "prompt": _prompt(output),
            }
        )
    Path(out).write_text(json.dumps(results))


if __name__ == "__main__":
    _main(sys.argv[1], sys.argv[2])
