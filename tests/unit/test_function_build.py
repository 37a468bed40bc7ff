"""The functions' build (functions/Makefile, run by `sam build`) targets what template.yaml
deploys them on: the runtime's Python, its architecture, and every function. That the
built packages hold their bytecode is checked on the build itself (.ci/stack-checks)."""

from __future__ import annotations

import re

from tests import cfn
from tests.support import ROOT

MAKEFILE = (ROOT / "functions" / "Makefile").read_text()
PLATFORM_OF = {"arm64": "manylinux2014_aarch64", "x86_64": "manylinux2014_x86_64"}


def variable(name: str) -> str:
    (value,) = re.findall(rf"^{name} := (\S+)$", MAKEFILE, flags=re.MULTILINE)
    return value


def functions() -> dict[str, dict]:
    return cfn.resources_of_type("AWS::Serverless::Function")


def test_the_build_installs_for_the_runtime_and_architecture_the_template_deploys():
    globals_ = cfn.template()["Globals"]["Function"]
    runtimes = {f["Properties"].get("Runtime", globals_["Runtime"]) for f in functions().values()}
    architectures = {
        a
        for f in functions().values()
        for a in f["Properties"].get("Architectures", globals_["Architectures"])
    }

    assert runtimes == {variable("LAMBDA_PYTHON")}
    assert runtimes == {"python" + variable("LAMBDA_PYTHON_VERSION")}
    assert {PLATFORM_OF[a] for a in architectures} == {variable("LAMBDA_PLATFORM")}


def test_every_function_is_built_by_the_makefile():
    for name, function in functions().items():
        assert function["Metadata"]["BuildMethod"] == "makefile", name
        assert re.search(rf"^(\S+ )*build-{name}( \S+)*:", MAKEFILE, flags=re.MULTILINE), name
