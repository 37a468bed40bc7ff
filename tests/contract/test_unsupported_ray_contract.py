"""`unsupported-ray`: the head node's Ray cannot be drained by ray_hooks (exit code 4).

Both sides against one example (unsupported-ray.response.json): ray_hooks prints it, with the
version and the missing features, before it touches the cluster; the Lambda's channel reads
it as UnsupportedRay, a refusal: recorded as rejected, never retried.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import ray_hooks.__main__ as cli
from ray_hooks import compat
from spot_responder.adapters.channel_local import LocalClusterChannel
from spot_responder.channel import ClusterRefused, UnsupportedRay
from spot_responder.contract import unsupported_ray
from tests.ray_hooks_support import notice, one_json_document, request

HERE = Path(__file__).parent
EXAMPLE = json.loads((HERE / "unsupported-ray.response.json").read_text())


def old_ray() -> compat.Support:
    """What probe() finds on Ray 2.47.0 (measured: tests/ray_versions/README.md)."""
    return compat.Support(ray_version=EXAMPLE["ray_version"], missing=tuple(EXAMPLE["missing"]))


def test_example_is_exactly_what_ray_hooks_prints_for_its_values() -> None:
    exc = compat.UnsupportedRay(EXAMPLE["ray_version"], tuple(EXAMPLE["missing"]))

    assert compat.unsupported_ray_document(exc) == EXAMPLE


def test_ray_outside_the_range_exits_4_with_the_version_and_the_missing_feature(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN a Ray whose probe says the drain cannot work
    monkeypatch.setattr(compat, "probe", old_ray)
    payload = json.dumps(request(notice("i-0a1b2c3d4e5f60001")))
    monkeypatch.setattr(sys, "stdin", _Stdin(payload))

    # WHEN the document's operation runs; no cluster is there, and none is looked for
    code, document = cli._run(["respond", "--address", "127.0.0.1:1"])

    # THEN the answer is unsupported-ray, not "cluster unreachable" (exit 3, retried)
    assert code == cli.EXIT_UNSUPPORTED_RAY == 4
    assert document == EXAMPLE


def test_reconcile_on_a_ray_outside_the_range_is_unsupported_ray_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(compat, "probe", old_ray)
    monkeypatch.setattr(sys, "stdin", _Stdin(json.dumps(_reconcile_request())))

    code, document = cli._run(["reconcile", "--address", "127.0.0.1:1"])

    assert code == 4
    assert document["outcome"] == "unsupported-ray"


def test_lambda_reads_the_example_as_a_refusal_naming_version_and_feature() -> None:
    reason = unsupported_ray(EXAMPLE)

    assert reason is not None
    assert reason.startswith("unsupported-ray: Ray 2.47.0")
    assert EXAMPLE["missing"][0] in reason
    assert unsupported_ray({"version": 1, "error": "cluster unreachable"}) is None


def test_local_channel_raises_unsupported_ray_a_refusal_not_a_retry(tmp_path: Path) -> None:
    # GIVEN a "python" whose ray_hooks answers exactly as on an unsupported Ray
    fake = tmp_path / "python"
    fake.write_text(
        f"#!{sys.executable}\nimport sys\n"
        f"sys.stdout.write({json.dumps(json.dumps(EXAMPLE))} + '\\n')\nsys.exit(4)\n"
    )
    fake.chmod(0o755)
    channel = LocalClusterChannel(ray_address="127.0.0.1:6379", python=str(fake))

    # WHEN the Lambda side sends a request
    with pytest.raises(UnsupportedRay) as raised:
        channel.send("ray-on-aws", request(notice("i-0a1b2c3d4e5f60001")))

    # THEN it is a ClusterRefused (recorded as rejected, not retried) naming the version
    assert isinstance(raised.value, ClusterRefused)
    assert "Ray 2.47.0" in str(raised.value)


def test_the_real_cli_prints_one_line_for_exit_4() -> None:
    """The document's stdout is one JSON line whatever the exit code."""
    code = (
        "import sys, json; from ray_hooks import compat; import ray_hooks.__main__ as m\n"
        f"compat.probe = lambda: compat.Support('2.47.0', ({EXAMPLE['missing'][0]!r},))\n"
        "sys.exit(m.main(['respond', '--address', '127.0.0.1:1']))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        input=json.dumps(request(notice("i-0a1b2c3d4e5f60001"))),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 4, done.stderr
    assert one_json_document(done.stdout, done.stderr) == EXAMPLE


class _Stdin:
    def __init__(self, text: str) -> None:
        self._text = text

    def read(self, size: int = -1) -> str:
        return self._text


def _reconcile_request() -> dict[str, Any]:
    return json.loads((HERE / "reconcile.request.json").read_text())
