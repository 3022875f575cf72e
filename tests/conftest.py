"""Shared test settings: CPU, few threads, reference tools located once."""

from __future__ import annotations

import os
import shutil

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import torch  # noqa: E402

torch.set_num_threads(1)


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"reference tool '{name}' is missing: install Debian's bart and ismrmrd-tools (.ci/run does this)"
        )
    return path


@pytest.fixture(scope="session")
def bart() -> str:
    return _tool("bart")


@pytest.fixture(scope="session")
def cuda_device() -> torch.device:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return torch.device("cuda")


#: the only reasons a test may skip: hardware this machine may lack. Anything else (a missing
#: reference tool, data or package) is a broken install and must fail, not pass silently.
ALLOWED_SKIP_REASONS = ("CUDA", "GPU", "glibc")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = str(report.longrepr[2]) if isinstance(report.longrepr, tuple) else str(report.longrepr)
        if not any(word in reason for word in ALLOWED_SKIP_REASONS):
            report.outcome = "failed"
            report.longrepr = f"skipped for '{reason}': a missing prerequisite must fail (see .ci/run)"
