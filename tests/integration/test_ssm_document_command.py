"""The SSM document's command, as template.yaml declares it, run the way the SSM agent runs it.

The agent puts each parameter in an environment variable (`interpolationType: ENV_VAR`:
`SSM_Operation`, `SSM_Request`) after checking it against the parameter's
`allowedPattern`, writes the runCommand to a script and runs it with the shell (bash on
Amazon Linux). Here the same script runs with bash against a real local Ray cluster, as
root like the agent, with RayUser = the current user and RayPython = this virtualenv.
"""

from __future__ import annotations

import base64
import getpass
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from spot_responder.cli.embedded import ARM_SPOT_WORKER, X86_SPOT_WORKER, EmbeddedRayCluster
from tests.cfn import resource, sub, template
from tests.ray_hooks_support import drained_by_ray, notice, one_json_document, request

pytestmark = pytest.mark.ray

DOCUMENT = resource("RespondDocument")["Properties"]["Content"]
PATTERNS = {name: spec["allowedPattern"] for name, spec in DOCUMENT["parameters"].items()}
STACK_PARAMETERS = template()["Parameters"]
RAY_USER = getpass.getuser()
RAY_PYTHON = str(Path(sys.executable).with_name("python3"))
AGENT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def allowed(parameter: str, value: str) -> bool:
    """Whether SSM would accept the value for the document parameter."""
    return re.fullmatch(PATTERNS[parameter], value) is not None


def encoded(document: dict[str, Any]) -> str:
    return base64.b64encode(json.dumps(document).encode()).decode()


def script() -> str:
    (step,) = DOCUMENT["mainSteps"]
    assert step["action"] == "aws:runShellScript"
    values = {"RayUser": RAY_USER, "RayPython": RAY_PYTHON}
    lines = [
        sub(line, values) if isinstance(line, dict) else line
        for line in step["inputs"]["runCommand"]
    ]
    return "\n".join(lines)


def run_document(
    tmp_path: Path, address: str, operation: str | None, request_b64: str | None
) -> subprocess.CompletedProcess[str]:
    """The runCommand in bash with the environment the agent gives it (and RAY_ADDRESS)."""
    script_file = tmp_path / "_script.sh"
    script_file.write_text(script())
    env = {"PATH": AGENT_PATH, "HOME": str(Path.home()), "RAY_ADDRESS": address}
    if operation is not None:
        env["SSM_Operation"] = operation
    if request_b64 is not None:
        env["SSM_Request"] = request_b64
    return subprocess.run(
        ["bash", str(script_file)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def gcs(ray_cluster: EmbeddedRayCluster) -> Any:
    from ray._raylet import GcsClient

    return GcsClient(address=ray_cluster.gcs_address)


def test_stack_accepts_the_user_and_python_this_test_renders() -> None:
    for name, value in {"RayUser": RAY_USER, "RayPython": RAY_PYTHON}.items():
        assert re.fullmatch(STACK_PARAMETERS[name]["AllowedPattern"], value), (name, value)


def test_document_command_drains_the_warned_node_and_prints_the_response(
    ray_cluster: EmbeddedRayCluster, gcs: Any, tmp_path: Path
) -> None:
    # GIVEN a spot warning for the x86 worker, as the Lambda sends it
    payload = encoded(request(notice(X86_SPOT_WORKER.instance_id)))
    assert allowed("Operation", "respond")
    assert allowed("Request", payload)

    # WHEN the agent runs the document's command on the head node
    done = run_document(tmp_path, ray_cluster.address, "respond", payload)

    # THEN the node is drained and the one JSON response on stdout says so
    assert done.returncode == 0, done.stderr
    response = one_json_document(done.stdout, done.stderr)
    (result,) = response["results"]
    assert result["outcome"] == "drained"
    assert result["ray_node_id"] == ray_cluster.node_id_for(X86_SPOT_WORKER.instance_id)
    assert result["ray_node_id"] in drained_by_ray(gcs)


def arm_worker_request() -> str:
    return encoded(request(notice(ARM_SPOT_WORKER.instance_id)))


@pytest.mark.parametrize(
    "operation",
    ["respond; rm -rf {marker}", "$(touch {marker})", "respond\ntouch {marker}", "describe", ""],
    ids=["command after", "command substitution", "second line", "other operation", "empty"],
)
def test_operation_outside_its_pattern_is_refused_and_nothing_is_drained(
    operation: str, ray_cluster: EmbeddedRayCluster, gcs: Any, tmp_path: Path
) -> None:
    marker = tmp_path / "marker"
    marker.write_text("still here")
    operation = operation.format(marker=marker)
    drained_before = drained_by_ray(gcs)

    assert not allowed("Operation", operation)  # SSM refuses it before the agent sees it
    done = run_document(tmp_path, ray_cluster.address, operation, arm_worker_request())

    assert done.returncode == 2
    assert one_json_document(done.stdout)["error"] == "operation not allowed"
    assert marker.read_text() == "still here"
    assert drained_by_ray(gcs) == drained_before


@pytest.mark.parametrize(
    ("request_value", "error"),
    [
        ("not base64!", "not valid base64"),
        (json.dumps(request(notice(ARM_SPOT_WORKER.instance_id))), "not valid base64"),
        (encoded(request(notice(ARM_SPOT_WORKER.instance_id))) + "; rm -rf /", "base64"),
        ("", "not set or empty"),
    ],
    ids=["not base64", "JSON, not base64", "command after base64", "empty"],
)
def test_request_outside_its_pattern_is_refused_and_nothing_is_drained(
    request_value: str, error: str, ray_cluster: EmbeddedRayCluster, gcs: Any, tmp_path: Path
) -> None:
    drained_before = drained_by_ray(gcs)

    assert not allowed("Request", request_value)  # SSM refuses it before the agent sees it
    done = run_document(tmp_path, ray_cluster.address, "respond", request_value)

    assert done.returncode == 2, done.stderr
    assert error in one_json_document(done.stdout)["error"]
    assert drained_by_ray(gcs) == drained_before


@pytest.mark.parametrize(
    ("document", "error"),
    [
        ({"version": 2, "operation": "respond"}, "unsupported contract version 2"),
        (
            request(notice(ARM_SPOT_WORKER.instance_id) | {"instance_id": "i-0a1b; reboot"}),
            "not an EC2 instance id",
        ),
    ],
    ids=["wrong version", "bad instance id"],
)
def test_base64_request_that_breaks_the_contract_is_refused_and_nothing_is_drained(
    document: dict[str, Any], error: str, ray_cluster: EmbeddedRayCluster, gcs: Any, tmp_path: Path
) -> None:
    drained_before = drained_by_ray(gcs)
    payload = encoded(document)

    assert allowed("Request", payload)  # base64 passes the pattern: ray_hooks must refuse it
    done = run_document(tmp_path, ray_cluster.address, "respond", payload)

    assert done.returncode == 2, done.stderr
    assert error in one_json_document(done.stdout)["error"]
    assert drained_by_ray(gcs) == drained_before


def test_an_agent_too_old_to_set_ssm_operation_exits_4_and_nothing_runs(tmp_path: Path) -> None:
    # An SSM Agent before 3.3.2746.0 ignores interpolationType ENV_VAR: no SSM_Operation
    marker = tmp_path / "ran"
    done = run_document(tmp_path, "127.0.0.1:1", None, arm_worker_request())

    assert done.returncode == 4, done.stderr
    error = one_json_document(done.stdout)["error"]
    assert "SSM Agent is older than 3.3.2746.0" in error
    assert not marker.exists()
