"""The Python stacks of the LMI deploy images (`STACKS`), and what a requirements.txt makes of one: the requirements
that apply on its Python, and the transformers the container will run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

#: transformers' continuous batching (the continuous engine) needs this transformers, Python and torch.
CONTINUOUS_TRANSFORMERS = Version("5.24.0")
CONTINUOUS_PYTHON = (3, 11)
CONTINUOUS_TORCH = Version("2.6")
#: the oldest Python transformers 5 installs on.
TRANSFORMERS_5_PYTHON = (3, 10)
#: the oldest vLLM the vllm engine runs on: its v1 API (delta outputs, AsyncLLM); tested on 0.32.
VLLM_ENGINE_VLLM = Version("0.10")
_URI_TAG = re.compile(r"/djl-inference:(\d+\.\d+\.\d+)-(deepspeed|lmi)")


@dataclass(frozen=True)
class ImageStack:
    """What one LMI image ships: its Python, torch, transformers and other packages the handler cares about."""

    name: str
    version: str
    python: tuple[int, int]
    torch: str
    transformers: str
    packages: dict[str, str] = field(default_factory=dict)
    #: the transformers versions the image's vLLM takes (its own requirement)
    vllm_transformers: str = ""

    @property
    def image(self) -> str:
        return f"{self.name}:{self.version}"

    @property
    def python_and_torch(self) -> str:
        return f"{self.image} has Python {self.python[0]}.{self.python[1]} and torch {self.torch}"

    def versions(self) -> dict[str, str]:
        """Package name → version for every package this table knows the image ships."""
        return {"torch": self.torch, "transformers": self.transformers, **self.packages}

    def runs_continuous(self) -> bool:
        """Whether transformers 5.24 can run on this image's Python and torch."""
        return self.python >= CONTINUOUS_PYTHON and Version(self.torch) >= CONTINUOUS_TORCH

    def runs_vllm(self, transformers: Version) -> bool:
        """Whether the image's vLLM runs the vllm engine, with this transformers beside it."""
        vllm = self.packages.get("vllm")
        return (
            vllm is not None
            and Version(vllm) >= VLLM_ENGINE_VLLM
            and SpecifierSet(self.vllm_transformers).contains(transformers, prereleases=True)
        )


STACKS = {
    stack.image: stack
    for stack in (
        ImageStack(
            "djl-deepspeed", "0.23.0", (3, 9), "2.0.1", "4.30.2", {"accelerate": "0.20.3", "deepspeed": "0.9.5"}
        ),
        ImageStack(
            "djl-deepspeed",
            "0.27.0",
            (3, 10),
            "2.1.2",
            "4.39.0",
            {"accelerate": "0.28.0", "deepspeed": "0.12.6", "vllm": "0.3.3"},
        ),
        ImageStack("djl-lmi", "0.36.0", (3, 12), "2.10.0", "4.57", {"vllm": "0.17"}, vllm_transformers="<5"),
    )
}


def stack_for(image: str) -> ImageStack | None:
    """The stack of `djl-deepspeed:<version>`, `djl-lmi:<version>` or a djl-inference image URI, if known."""
    match = _URI_TAG.search(image)
    return STACKS.get(f"djl-{match.group(2)}:{match.group(1)}" if match else image)


def parse_requirements(text: str) -> tuple[list[Requirement], list[str]]:
    """(requirements, lines that do not parse) of a requirements.txt; comments, blanks and pip options skipped."""
    parsed, invalid = [], []
    for raw in text.splitlines():
        line = re.sub(r"(^|\s)#.*", "", raw).strip()
        if not line or line.startswith("-"):
            continue
        try:
            parsed.append(Requirement(line))
        except InvalidRequirement:
            invalid.append(line)
    return parsed, invalid


def applying(stack: ImageStack, requirements: list[Requirement]) -> list[Requirement]:
    """The requirements whose environment markers hold on the image's Python."""
    python = f"{stack.python[0]}.{stack.python[1]}"
    environment = {"python_version": python, "python_full_version": f"{python}.0"}
    return [req for req in requirements if req.marker is None or req.marker.evaluate(environment)]


def lowest_allowed(req: Requirement) -> Version | None:
    """The lowest version the requirement's specifier admits, where a clause bounds it from below."""
    bounds = [
        Version(spec.version.removesuffix(".*")) for spec in req.specifier if spec.operator in ("==", "~=", ">=", ">")
    ]
    return max(bounds, default=None)


def running_transformers(stack: ImageStack, shipped: list[Requirement]) -> Version:
    """The transformers the container will run: the image's, or the lowest one a requirement replacing it allows."""
    image = Version(stack.transformers)
    for req in applying(stack, shipped):
        if canonicalize_name(req.name) == "transformers" and not req.specifier.contains(image, prereleases=True):
            return lowest_allowed(req) or image
    return image


def continuous_ready(stack: ImageStack, shipped: list[Requirement]) -> bool:
    """Whether the continuous engine runs there: transformers 5.24 on the image's Python and torch, and shipped."""
    return stack.runs_continuous() and running_transformers(stack, shipped) >= CONTINUOUS_TRANSFORMERS
