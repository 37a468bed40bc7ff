"""Read template.yaml the way CloudFormation does, so tests build what the stack declares."""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

TEMPLATE = Path(__file__).resolve().parent.parent / "template.yaml"


class _CfnLoader(yaml.SafeLoader):
    """A YAML loader that turns short tags (!Sub, !Ref, !GetAtt, ...) into their long form."""


def _tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    name = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
        if suffix == "GetAtt":
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {name: value}


_CfnLoader.add_multi_constructor("!", _tag)


@lru_cache(maxsize=1)
def template() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.load(TEMPLATE.read_text(), Loader=_CfnLoader)
    return loaded


def deployed(parameters: Mapping[str, str] | None = None) -> dict[str, Any]:
    """template.yaml with its Fn::ForEach loops expanded, as the AWS::LanguageExtensions
    transform does, for these parameter values (the template's defaults for the rest).
    The SAM CLI's implementation of the transform does the work; other intrinsic
    functions are left for the caller to evaluate."""
    from samcli.lib.cfn_language_extensions.api import create_default_intrinsic_resolver
    from samcli.lib.cfn_language_extensions.models import TemplateProcessingContext
    from samcli.lib.cfn_language_extensions.pipeline import ProcessingPipeline
    from samcli.lib.cfn_language_extensions.processors import (
        ForEachProcessor,
        TemplateParsingProcessor,
    )

    context = TemplateProcessingContext(
        fragment=copy.deepcopy(template()), parameter_values=dict(parameters or {})
    )
    resolver = create_default_intrinsic_resolver(context)
    pipeline = ProcessingPipeline([TemplateParsingProcessor(), ForEachProcessor(resolver)])
    expanded: dict[str, Any] = pipeline.process_template(context)
    return expanded


def resource(logical_id: str) -> dict[str, Any]:
    """A copy of one resource's declaration (tests may change it freely)."""
    found: dict[str, Any] = copy.deepcopy(template()["Resources"][logical_id])
    return found


def resources_of_type(kind: str) -> dict[str, dict[str, Any]]:
    resources = deployed()["Resources"]  # with the Fn::ForEach loops expanded
    return {k: v for k, v in resources.items() if v["Type"] == kind}


def sub(value: Any, variables: dict[str, str]) -> str:
    """Resolve a Fn::Sub (string or [string, vars]) with the given parameter values.

    `${!Literal}` becomes `${Literal}`, as CloudFormation does. An unknown variable is an
    error, so a test notices when the template grows a variable it did not expect.
    """
    if isinstance(value, dict):
        value = value["Fn::Sub"]
    text, extra = (value, {}) if isinstance(value, str) else (value[0], value[1])
    names = {**variables, **extra}

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name.startswith("!"):
            return "${" + name[1:] + "}"
        if name not in names:
            raise KeyError(f"template variable ${{{name}}} has no value in this test")
        return str(names[name])

    return re.sub(r"\$\{([^}]+)\}", replace, text)


def dynamodb_table_kwargs(logical_id: str, table_name: str) -> dict[str, Any]:
    """CreateTable arguments from an AWS::DynamoDB::Table's declared properties."""
    props = resource(logical_id)["Properties"]
    kwargs: dict[str, Any] = {
        "TableName": table_name,
        "AttributeDefinitions": props["AttributeDefinitions"],
        "KeySchema": props["KeySchema"],
        "BillingMode": props.get("BillingMode", "PROVISIONED"),
    }
    if "GlobalSecondaryIndexes" in props:
        kwargs["GlobalSecondaryIndexes"] = props["GlobalSecondaryIndexes"]
    return kwargs
