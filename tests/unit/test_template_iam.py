"""Least privilege, read out of template.yaml: every IAM statement the stack creates is as
narrow as the API allows. Also the few timing facts the two-minute window depends on."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest

from tests import cfn

ACCOUNT, REGION, PARTITION = "123456789012", "us-west-2", "aws"
PSEUDO = {
    "AWS::AccountId": ACCOUNT,
    "AWS::Region": REGION,
    "AWS::Partition": PARTITION,
    "AWS::StackName": "ray-spot-responder",
    "AWS::URLSuffix": "amazonaws.com",
}
NO_VALUE = object()

# Actions with no resource-level permissions: AWS only accepts "Resource": "*" for them.
# ec2:Describe* are the reads; GetCommandInvocation reads the output of commands that only
# the respond document can run; the X-Ray pair writes traces.
UNSCOPABLE = {
    "ec2:DescribeInstances",
    "ec2:DescribeInstanceTypes",
    "ec2:DescribeImages",
    "ec2:DescribeSubnets",
    "ec2:DescribeSecurityGroups",
    "ssm:GetCommandInvocation",
    "ssm:CancelCommand",
    "ssm:DescribeInstanceInformation",
    "xray:PutTraceSegments",
    "xray:PutTelemetryRecords",
}
# The SSM Agent's message channels: no resource-level permissions either.
AGENT_CHANNELS = {
    "ec2messages:AcknowledgeMessage",
    "ec2messages:DeleteMessage",
    "ec2messages:FailMessage",
    "ec2messages:GetEndpoint",
    "ec2messages:GetMessages",
    "ec2messages:SendReply",
    "ssmmessages:CreateControlChannel",
    "ssmmessages:CreateDataChannel",
    "ssmmessages:OpenControlChannel",
    "ssmmessages:OpenDataChannel",
}
DOCUMENT_ARN = f"arn:aws:ssm:{REGION}:{ACCOUNT}:document/<RespondDocument>"
INSTANCES_ARN = f"arn:aws:ec2:{REGION}:{ACCOUNT}:instance/*"
REARM_SCHEDULES_ARN = f"arn:aws:scheduler:{REGION}:{ACCOUNT}:schedule/<NoticeRearmScheduleGroup>/*"

# Parameter sets the tests look at: the defaults, and every optional part switched on.
DEFAULTS: dict[str, str] = {}
EVERYTHING = {
    "ClusterAllowlist": "ray-on-aws,batch-2",
    "SpillBucketName": "my-ray-spill",
    "AlarmEmail": "ops@example.com",
    "DrillClusterName": "ray-on-aws",
}


# ---------------------------------------------------------------- a tiny CloudFormation


class Stack:
    """template.yaml evaluated for one set of parameter values.

    Ref to a resource gives `<LogicalId>`, GetAtt gives `<LogicalId.Attribute>`, so
    assertions can name exactly which resource a statement points at.
    """

    def __init__(self, overrides: dict[str, str]) -> None:
        template = cfn.deployed(overrides)
        self.parameters = {
            name: str(overrides.get(name, spec.get("Default", "")))
            for name, spec in template["Parameters"].items()
        }
        self.conditions: dict[str, bool] = {}
        for name, expression in template.get("Conditions", {}).items():
            self.conditions[name] = bool(self.eval(expression))
        self.resources = {
            name: self.eval(copy.deepcopy(body))
            for name, body in template["Resources"].items()
            if self.conditions.get(body.get("Condition", ""), True)
        }

    def eval(self, node: Any) -> Any:
        if isinstance(node, list):
            return [v for v in (self.eval(i) for i in node) if v is not NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            (key, arg), *_ = node.items()
            if key == "Ref" or key.startswith("Fn::") or key == "Condition":
                return self.intrinsic(key, arg)
        return {k: v for k, v in ((k, self.eval(v)) for k, v in node.items()) if v is not NO_VALUE}

    def intrinsic(self, key: str, arg: Any) -> Any:
        functions = {
            # Fn::ForEach leaves Ref and GetAtt of a generated name as Fn::Sub
            "Ref": lambda a: self._ref(self.eval(a)),
            "Fn::GetAtt": lambda a: f"<{self.eval(a[0])}.{a[1]}>",
            "Fn::Sub": self._sub,
            "Fn::If": lambda a: self.eval(a[1] if self.conditions[a[0]] else a[2]),
            "Fn::Equals": lambda a: str(self.eval(a[0])) == str(self.eval(a[1])),
            "Fn::Not": lambda a: not self.eval(a[0]),
            "Fn::And": lambda a: all(self.eval(i) for i in a),
            "Fn::Or": lambda a: any(self.eval(i) for i in a),
            "Condition": lambda a: self.conditions[a],
            "Fn::Split": lambda a: str(self.eval(a[1])).split(a[0]),
            "Fn::Join": lambda a: a[0].join(str(i) for i in self.eval(a[1])),
        }
        return functions[key](arg)

    def _ref(self, name: str) -> Any:
        if name == "AWS::NoValue":
            return NO_VALUE
        spec = cfn.template()["Parameters"].get(name, {})
        if spec.get("Type") == "CommaDelimitedList":
            return self.parameters[name].split(",")
        return PSEUDO.get(name) or self.parameters.get(name, f"<{name}>")

    def _sub(self, arg: Any) -> str:
        text, extra = (arg, {}) if isinstance(arg, str) else (arg[0], self.eval(arg[1]))
        known = {**PSEUDO, **self.parameters, **extra}
        # a name that is no parameter is a resource: Ref or LogicalId.Attribute
        names = re.findall(r"\$\{([^}!][^}]*)\}", text)
        return cfn.sub(text, {n: str(known.get(n, f"<{n}>")) for n in names})

    def head_roles(self) -> list[str]:
        """The roles of the head instance profiles: one per allow-listed cluster, or one."""
        return sorted(
            role.strip("<>")
            for name, profile in self.of_type("AWS::IAM::InstanceProfile").items()
            if name.startswith("RayHeadInstanceProfile")
            for role in profile["Properties"]["Roles"]
        )

    def of_type(self, kind: str) -> dict[str, dict[str, Any]]:
        return {k: v for k, v in self.resources.items() if v["Type"] == kind}

    def policy_documents(self) -> dict[str, dict[str, Any]]:
        """Every permission policy the stack creates, by `Resource/PolicyName`."""
        docs: dict[str, dict[str, Any]] = {}
        for name, role in self.of_type("AWS::IAM::Role").items():
            for policy in role["Properties"].get("Policies", []):
                docs[f"{name}/{policy['PolicyName']}"] = policy["PolicyDocument"]
        for kind in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
            for name, policy in self.of_type(kind).items():
                docs[name] = policy["Properties"]["PolicyDocument"]
        return docs

    def resource_policies(self) -> dict[str, dict[str, Any]]:
        kinds = ("AWS::SQS::QueuePolicy", "AWS::SNS::TopicPolicy")
        return {
            name: res["Properties"]["PolicyDocument"]
            for name, res in self.resources.items()
            if res["Type"] in kinds
        }

    def statements(self, docs: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        docs = self.policy_documents() if docs is None else docs
        found = []
        for origin, doc in docs.items():
            for statement in doc["Statement"]:
                found.append({**statement, "_origin": origin})
        return found

    def role_statements(self, role: str) -> list[dict[str, Any]]:
        """Statements of one role: its inline policies, the AWS::IAM::Policy on it and the
        stack's managed policies it names."""
        attached = {
            name
            for name, res in self.of_type("AWS::IAM::Policy").items()
            if f"<{role}>" in res["Properties"]["Roles"]
        }
        named = self.resources[role]["Properties"].get("ManagedPolicyArns", [])
        attached |= {n for n in self.of_type("AWS::IAM::ManagedPolicy") if f"<{n}>" in named}
        return [
            s
            for s in self.statements()
            if s["_origin"].startswith(f"{role}/") or s["_origin"] in attached
        ]


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def actions(statement: dict[str, Any]) -> list[str]:
    return as_list(statement["Action"])


def resources(statement: dict[str, Any]) -> list[str]:
    return as_list(statement["Resource"])


@pytest.fixture(scope="module", params=["defaults", "everything-on"])
def stack(request) -> Stack:
    return Stack(DEFAULTS if request.param == "defaults" else EVERYTHING)


# ---------------------------------------------------------------- everywhere


def test_no_statement_anywhere_grants_a_wildcard_action(stack):
    everything = stack.statements() + stack.statements(stack.resource_policies())
    assert everything, "found no IAM statements at all"
    for statement in everything:
        assert "NotAction" not in statement, statement["_origin"]
        for action in actions(statement):
            assert "*" not in action, f"{statement['_origin']}: {action}"


def test_resource_star_only_for_apis_without_resource_level_permissions(stack):
    for statement in stack.statements():
        assert "NotResource" not in statement, statement["_origin"]
        if "*" in resources(statement):
            assert resources(statement) == ["*"]
            assert set(actions(statement)) <= UNSCOPABLE | AGENT_CHANNELS, statement["_origin"]


def test_the_only_unscoped_reads_are_ec2_describe_and_command_state(stack):
    unscoped_reads = {
        action
        for statement in stack.statements()
        if "*" in resources(statement)
        for action in actions(statement)
        if not action.startswith("xray:Put") and action not in AGENT_CHANNELS
    }
    assert {a for a in unscoped_reads if not a.startswith("ec2:Describe")} <= {
        "ssm:GetCommandInvocation",
        "ssm:CancelCommand",
        "ssm:DescribeInstanceInformation",
    }


def test_identity_policies_only_allow(stack):
    for statement in stack.statements():
        assert statement["Effect"] == "Allow", statement["_origin"]


def test_no_role_has_a_managed_policy_but_the_stacks_own(stack):
    # AmazonSSMManagedInstanceCore would let every node read all of Parameter Store
    own = {f"<{name}>" for name in stack.of_type("AWS::IAM::ManagedPolicy")}
    for name, role in stack.of_type("AWS::IAM::Role").items():
        assert set(role["Properties"].get("ManagedPolicyArns", [])) <= own, name


def test_ray_nodes_read_no_parameter_store_value_but_the_public_ami_ids(stack):
    for role in [*stack.head_roles(), "RayWorkerRole"]:
        for statement in stack.role_statements(role):
            reads = [a for a in actions(statement) if a.startswith("ssm:GetParameter")]
            if reads:
                assert role in stack.head_roles()
                assert resources(statement) == [
                    f"arn:aws:ssm:{REGION}::parameter/aws/service/ami-amazon-linux-latest/*"
                ]


def test_nodes_get_what_the_ssm_agent_needs_and_nothing_more_of_ssm(stack):
    for role in [*stack.head_roles(), "RayWorkerRole"]:
        granted = {
            a
            for s in stack.role_statements(role)
            for a in actions(s)
            if a.split(":")[0] in {"ssm", "ssmmessages", "ec2messages"}
        }
        expected = AGENT_CHANNELS | {"ssm:UpdateInstanceInformation"}
        if role in stack.head_roles():
            expected |= {"ssm:GetParameters"}  # the AMI aliases only (above)
        assert granted == expected, role


def test_every_role_trusts_one_service_and_conditions_only_where_aws_documents_them(stack):
    for name, role in stack.of_type("AWS::IAM::Role").items():
        (trust,) = role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
        assert trust["Action"] == "sts:AssumeRole"
        assert set(trust["Principal"]) == {"Service"}, name
        assert isinstance(trust["Principal"]["Service"], str), name
        if trust["Principal"]["Service"] == "ec2.amazonaws.com":
            # EC2 is not documented to send aws:SourceAccount when it assumes an instance
            # role: a condition on it could leave every node without credentials.
            assert "Condition" not in trust, name
        elif trust["Principal"]["Service"] == "scheduler.amazonaws.com":
            # EventBridge Scheduler documents both: the account, and the schedule's ARN
            assert trust["Condition"] == {
                "StringEquals": {"aws:SourceAccount": ACCOUNT},
                "ArnLike": {"aws:SourceArn": REARM_SCHEDULES_ARN},
            }, name
        else:
            assert trust["Condition"] == {"StringEquals": {"aws:SourceAccount": ACCOUNT}}, name


# ---------------------------------------------------------------- the functions


def test_functions_run_with_the_stacks_own_roles_not_sam_generated_ones(stack):
    # SAM's generated role for an SQS event source would attach a managed policy that
    # allows sqs:ReceiveMessage on every queue, and logs:* on every log group.
    expected = {"ResponderFunction": "ResponderRole", "ReconcileFunction": "ReconcileRole"}
    functions = stack.of_type("AWS::Serverless::Function")
    assert set(functions) == set(expected)
    for name, function in functions.items():
        assert function["Properties"]["Role"] == f"<{expected[name]}.Arn>"
        assert "Policies" not in function["Properties"]


def test_send_command_runs_only_the_respond_document(stack):
    for role in ("ResponderRole", "ReconcileRole"):
        granted = [s for s in stack.role_statements(role) if "ssm:SendCommand" in actions(s)]
        assert {r for s in granted for r in resources(s)} == {DOCUMENT_ARN, INSTANCES_ARN}
        for statement in granted:
            assert actions(statement) == ["ssm:SendCommand"]
            assert len(resources(statement)) == 1
    # nobody else may send commands at all
    others = [
        s
        for s in stack.statements()
        if "ssm:SendCommand" in actions(s)
        and not s["_origin"].startswith(("ResponderRole/", "ReconcileRole/"))
    ]
    assert others == []


def test_send_command_reaches_only_instances_tagged_as_ray_head_nodes(stack):
    for role in ("ResponderRole", "ReconcileRole"):
        (on_instances,) = [
            s for s in stack.role_statements(role) if resources(s) == [INSTANCES_ARN]
        ]
        condition = on_instances["Condition"]
        assert condition["StringEquals"]["aws:ResourceTag/ray-node-type"] == "head"


def test_cluster_allowlist_narrows_send_command_to_the_listed_clusters():
    def cluster_condition(stack: Stack) -> dict[str, Any]:
        (on_instances,) = [
            s for s in stack.role_statements("ResponderRole") if resources(s) == [INSTANCES_ARN]
        ]
        condition: dict[str, Any] = on_instances["Condition"]
        return condition

    # GIVEN no allowlist: any instance tagged with some cluster name (and as a head)
    assert cluster_condition(Stack(DEFAULTS))["StringLike"] == {
        "aws:ResourceTag/ray-cluster-name": "?*"
    }
    # GIVEN an allowlist: only the heads of those clusters
    narrowed = cluster_condition(Stack({"ClusterAllowlist": "ray-on-aws,batch-2"}))
    assert narrowed == {
        "StringEquals": {
            "aws:ResourceTag/ray-node-type": "head",
            "aws:ResourceTag/ray-cluster-name": ["ray-on-aws", "batch-2"],
        }
    }
    # and the code gets the same list
    listed = Stack({"ClusterAllowlist": "ray-on-aws,batch-2"})
    globals_env = listed.eval(cfn.template()["Globals"]["Function"]["Environment"]["Variables"])
    assert globals_env["CLUSTER_ALLOWLIST"] == "ray-on-aws,batch-2"


def test_dynamodb_access_is_limited_to_the_ledger_table_and_its_index(stack):
    tables = {
        "<LedgerTable.Arn>",
        "<LedgerTable.Arn>/index/by-job",
    }
    granted = [s for s in stack.statements() if any(a.startswith("dynamodb:") for a in actions(s))]
    assert granted
    for statement in granted:
        assert set(resources(statement)) <= tables, statement["_origin"]
        assert all(a.startswith("dynamodb:") for a in actions(statement))
        # no table management, no scans from the functions
        assert not {"dynamodb:Scan", "dynamodb:DeleteTable", "dynamodb:CreateTable"} & set(
            actions(statement)
        )


def test_responder_consumes_only_the_notice_queue_and_writes_only_its_log_group(stack):
    statements = stack.role_statements("ResponderRole")
    sqs = [s for s in statements if any(a.startswith("sqs:") for a in actions(s))]
    assert [resources(s) for s in sqs] == [["<NoticeQueue.Arn>"], ["<NoticeDeadLetterQueue.Arn>"]]
    # the dead-letter queue: only to put there the notices given up on
    assert actions(sqs[1]) == ["sqs:SendMessage"]
    assert "sqs:SendMessage" not in actions(sqs[0])
    logs = [s for s in statements if any(a.startswith("logs:") for a in actions(s))]
    assert [resources(s) for s in logs] == [["<ResponderLogGroup.Arn>"]]
    assert set(actions(logs[0])) == {"logs:CreateLogStream", "logs:PutLogEvents"}


def test_sam_transform_adds_no_role_or_policy_of_its_own(monkeypatch):
    """The deployed template (after the SAM transform) holds only the roles above, plus
    the scheduler's role that may invoke the reconcile function and nothing else."""
    from samtranslator.translator.transform import transform

    class NoManagedPolicyLookups:
        def load(self) -> dict[str, str]:
            raise AssertionError("the SAM transform wanted to look up managed policies")

    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    # what SAM transforms is the template after AWS::LanguageExtensions, which runs first
    template = json.loads(json.dumps(cfn.deployed(EVERYTHING)))
    template["Transform"] = "AWS::Serverless-2016-10-31"
    template["Globals"]["Function"]["CodeUri"] = "s3://bucket/code.zip"
    deployed = transform(template, {}, NoManagedPolicyLookups())["Resources"]
    roles = {k for k, v in deployed.items() if v["Type"] == "AWS::IAM::Role"}
    ours = {k for k, v in template["Resources"].items() if v["Type"] == "AWS::IAM::Role"}
    assert {"RayHeadRoleForrayonaws", "RayHeadRoleForbatch2"} <= ours
    assert roles - ours == {"ReconcileFunctionReconcileRole"}
    scheduler = deployed["ReconcileFunctionReconcileRole"]["Properties"]
    assert "ManagedPolicyArns" not in scheduler
    (policy,) = scheduler["Policies"]
    assert policy["PolicyDocument"]["Statement"] == [
        {
            "Action": "lambda:InvokeFunction",
            "Effect": "Allow",
            "Resource": {"Fn::GetAtt": ["ReconcileFunction", "Arn"]},
        }
    ]


def test_sam_deploy_as_configured_expands_the_per_cluster_loops():
    """Fn::ForEach needs the AWS::LanguageExtensions transform, which CloudFormation runs
    only with CAPABILITY_AUTO_EXPAND and the SAM CLI only with its language-extensions
    option: samconfig.toml, what `sam build && sam deploy` reads, turns both on."""
    import tomllib

    assert cfn.template()["Transform"][0] == "AWS::LanguageExtensions"
    config = tomllib.loads((cfn.TEMPLATE.parent / "samconfig.toml").read_text())["default"]
    for command in ("build", "package", "deploy"):
        assert config[command]["parameters"]["language_extensions"] is True, command
    capabilities = config["deploy"]["parameters"]["capabilities"].split()
    assert set(capabilities) == {"CAPABILITY_IAM", "CAPABILITY_AUTO_EXPAND"}


# ---------------------------------------------------------------- the Ray nodes


def cluster_scope(stack: Stack, key: str) -> dict[str, Any]:
    """The ray-cluster-name part of a head-role condition: with an allowlist, the cluster
    the head role itself is tagged with (each listed cluster has a role of its own)."""
    if stack.conditions["HasClusterAllowlist"]:
        return {"StringEquals": {key: "${aws:PrincipalTag/ray-cluster-name}"}}
    return {"StringLike": {key: "?*"}}


def merged(*conditions: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for condition in conditions:
        for operator, keys in condition.items():
            out.setdefault(operator, {}).update(keys)
    return out


def test_ray_head_launches_only_ray_workers_of_the_bundles_instance_types(stack):
    for head in stack.head_roles():
        launch_only_workers(stack, stack.role_statements(head))


def launch_only_workers(stack: Stack, statements: list[dict[str, Any]]) -> None:
    from ray_hooks.bundle.render import ClusterOptions

    (on_instances,) = [
        s for s in statements if "ec2:RunInstances" in actions(s) and INSTANCES_ARN in resources(s)
    ]
    assert resources(on_instances) == [INSTANCES_ARN]
    bundle_types = [ClusterOptions.x86_instance_type, ClusterOptions.arm_instance_type]
    assert on_instances["Condition"] == merged(
        {
            "StringEquals": {
                "aws:RequestTag/ray-node-type": "worker",
                "ec2:InstanceType": bundle_types,
            }
        },
        cluster_scope(stack, "aws:RequestTag/ray-cluster-name"),
    )


def test_ray_head_terminates_only_ray_workers(stack):
    for head in stack.head_roles():
        (terminate,) = [
            s for s in stack.role_statements(head) if "ec2:TerminateInstances" in actions(s)
        ]
        assert resources(terminate) == [INSTANCES_ARN]
        assert terminate["Condition"] == merged(
            {"StringEquals": {"aws:ResourceTag/ray-node-type": "worker"}},
            cluster_scope(stack, "aws:ResourceTag/ray-cluster-name"),
        )


def test_ray_head_retags_only_the_status_tags_of_workers(stack):
    for head in stack.head_roles():
        tagging = [s for s in stack.role_statements(head) if "ec2:CreateTags" in actions(s)]
        assert len(tagging) == 2
        at_launch, after = sorted(tagging, key=lambda s: "ec2:CreateAction" not in str(s))
        assert at_launch["Condition"] == {"StringEquals": {"ec2:CreateAction": "RunInstances"}}
        # after launch Ray sets only these (ray/autoscaler/_private/updater.py); ray-node-type
        # and ray-cluster-name cannot be rewritten, so a head cannot be turned into a worker
        assert after["Condition"] == merged(
            {"StringEquals": {"aws:ResourceTag/ray-node-type": "worker"}},
            cluster_scope(stack, "aws:ResourceTag/ray-cluster-name"),
            {
                "ForAllValues:StringEquals": {
                    "aws:TagKeys": [
                        "ray-node-status",
                        "ray-runtime-config",
                        "ray-file-mounts-contents",
                    ]
                }
            },
        )
        for statement in tagging:
            assert resources(statement) == [INSTANCES_ARN]


def test_each_allowlisted_cluster_has_a_head_role_of_its_own():
    # without an allowlist, one head role serves every cluster
    assert Stack(DEFAULTS).head_roles() == ["RayHeadRole"]
    stack = Stack(EVERYTHING)
    assert "RayHeadRole" not in stack.resources
    roles = {name: stack.resources[name]["Properties"] for name in stack.head_roles()}
    # the tag the head policy compares with: the principal's own ray-cluster-name
    tagged = {
        name: {t["Key"]: t["Value"] for t in props.get("Tags", [])}.get("ray-cluster-name")
        for name, props in roles.items()
    }
    assert tagged == {"RayHeadRoleForrayonaws": "ray-on-aws", "RayHeadRoleForbatch2": "batch-2"}
    # the same policies on each; every cluster condition in them names the role's own tag
    assert len({json.dumps(p["ManagedPolicyArns"]) for p in roles.values()}) == 1
    head_policy = stack.resources["RayHeadAutoscalerPolicy"]["Properties"]["PolicyDocument"]
    scoped = [
        value
        for statement in head_policy["Statement"]
        for keys in statement.get("Condition", {}).values()
        for key, value in keys.items()
        if key.endswith("/ray-cluster-name")
    ]
    assert len(scoped) == 3  # launch, retag, terminate
    assert set(scoped) == {"${aws:PrincipalTag/ray-cluster-name}"}
    # and each cluster's head instance profile is exported for its cluster-spot.yaml
    outputs = cfn.deployed(EVERYTHING)["Outputs"]
    for cluster in ("rayonaws", "batch2"):
        output = stack.eval(outputs[f"RayHeadInstanceProfileArnFor{cluster}"])
        assert output["Value"] == f"<RayHeadInstanceProfileFor{cluster}.Arn>"
        assert stack.resources[f"RayHeadInstanceProfileFor{cluster}"]["Properties"]["Roles"] == [
            f"<RayHeadRoleFor{cluster}>"
        ]
        assert output["Export"]["Name"].endswith(f"-RayHeadInstanceProfileArn-{cluster}")
    present = {k for k, v in outputs.items() if stack.conditions.get(v.get("Condition", ""), True)}
    assert "RayHeadInstanceProfileArn" not in present


def test_roles_are_passed_only_as_named_and_only_to_their_service(stack):
    # the head passes the worker role to EC2; the responder the rearm role to Scheduler
    passing = {s["_origin"]: s for s in stack.statements() if "iam:PassRole" in actions(s)}
    assert set(passing) == {"RayHeadAutoscalerPolicy", "ResponderRole/respond"}
    head, responder = passing["RayHeadAutoscalerPolicy"], passing["ResponderRole/respond"]
    assert resources(head) == ["<RayWorkerRole.Arn>"]
    assert head["Condition"] == {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}}
    assert resources(responder) == ["<NoticeRearmRole.Arn>"]
    assert responder["Condition"] == {
        "StringEquals": {"iam:PassedToService": "scheduler.amazonaws.com"}
    }


def test_a_change_far_ahead_is_brought_back_only_to_the_notice_queue(stack):
    # the responder creates schedules in the stack's own group, nothing else of Scheduler
    scheduling = [
        s for s in stack.statements() if any(a.startswith("scheduler:") for a in actions(s))
    ]
    assert [(s["_origin"], actions(s), resources(s)) for s in scheduling] == [
        ("ResponderRole/respond", ["scheduler:CreateSchedule"], [REARM_SCHEDULES_ARN])
    ]
    # and what those schedules run as may only send to the notice queue
    assert [(actions(s), resources(s)) for s in stack.role_statements("NoticeRearmRole")] == [
        (["sqs:SendMessage"], ["<NoticeQueue.Arn>"])
    ]


def test_ray_workers_may_do_nothing_but_run_the_ssm_agent_and_optional_spilling(stack):
    for statement in stack.role_statements("RayWorkerRole"):
        assert statement["_origin"] in {"RaySsmAgentPolicy", "RaySpillPolicy"}
        if statement["_origin"] == "RaySpillPolicy":
            assert all(a.startswith("s3:") for a in actions(statement))
    role = stack.resources["RayWorkerRole"]["Properties"]
    assert "Policies" not in role
    spilling = ["<RaySpillPolicy>"] if "RaySpillPolicy" in stack.resources else []
    expected = ["<RaySsmAgentPolicy>", *spilling]
    assert role["ManagedPolicyArns"] == expected


def test_object_spilling_reaches_only_its_prefix_of_the_named_bucket():
    assert "RaySpillPolicy" not in Stack(DEFAULTS).resources
    statements = Stack(EVERYTHING).role_statements("RayHeadRoleForrayonaws")
    spill = [s for s in statements if s["_origin"] == "RaySpillPolicy"]
    assert {r for s in spill for r in resources(s)} == {
        "arn:aws:s3:::my-ray-spill/ray-spill/*",
        "arn:aws:s3:::my-ray-spill",
    }
    (listing,) = [s for s in spill if actions(s) == ["s3:ListBucket"]]
    assert listing["Condition"] == {"StringLike": {"s3:prefix": "ray-spill/*"}}


def test_instance_profiles_wrap_the_node_roles_and_are_exported():
    stack = Stack(DEFAULTS)
    profiles = stack.of_type("AWS::IAM::InstanceProfile")
    assert {k: v["Properties"]["Roles"] for k, v in profiles.items()} == {
        "RayHeadInstanceProfile": ["<RayHeadRole>"],
        "RayWorkerInstanceProfile": ["<RayWorkerRole>"],
    }
    outputs = cfn.template()["Outputs"]
    for name in ("RayHeadInstanceProfileArn", "RayWorkerInstanceProfileArn"):
        assert "Export" in outputs[name]


# ---------------------------------------------------------------- the drill


def test_drill_exists_only_when_asked_for():
    assert not Stack(DEFAULTS).of_type("AWS::FIS::ExperimentTemplate")
    assert "DrillRole" not in Stack(DEFAULTS).resources


def test_drill_interrupts_only_spot_workers_of_the_named_cluster():
    stack = Stack(EVERYTHING)
    (interrupt,) = [
        s
        for s in stack.role_statements("DrillRole")
        if "ec2:SendSpotInstanceInterruptions" in actions(s)
    ]
    assert resources(interrupt) == [INSTANCES_ARN]
    assert interrupt["Condition"] == {
        "StringEquals": {
            "aws:ResourceTag/ray-cluster-name": "ray-on-aws",
            "aws:ResourceTag/ray-node-type": "worker",
        }
    }
    experiment = stack.resources["DrillExperimentTemplate"]["Properties"]
    target = experiment["Targets"]["RaySpotWorkers"]
    assert target["ResourceType"] == "aws:ec2:spot-instance"
    assert target["ResourceTags"] == {"ray-cluster-name": "ray-on-aws", "ray-node-type": "worker"}
    (action,) = experiment["Actions"].values()
    assert action["ActionId"] == "aws:ec2:send-spot-instance-interruptions"
    stops = {c["Value"] for c in experiment["StopConditions"]}
    assert stops == {"<HeadNodeNoticesAlarm.Arn>", "<DrainFailuresAlarm.Arn>"}


# ---------------------------------------------------------------- resource policies


def test_queues_accept_messages_only_from_the_stacks_rules(stack):
    allow, deny_notices, deny_dead_letters = stack.resource_policies()["NoticeQueuePolicy"][
        "Statement"
    ]
    rules = {f"<{name}.Arn>" for name in stack.of_type("AWS::Events::Rule")}
    assert allow["Effect"] == "Allow"
    assert allow["Principal"] == {"Service": "events.amazonaws.com"}
    assert actions(allow) == ["sqs:SendMessage"]
    assert set(allow["Condition"]["ArnEquals"]["aws:SourceArn"]) == rules
    # AND nobody else in the account may send, whatever their identity policy says: an
    # explicit deny for every sender that is neither a rule nor an allowed role
    for deny, queue, allowed_roles in (
        (deny_notices, "<NoticeQueue.Arn>", ["<NoticeRearmRole.Arn>"]),
        (deny_dead_letters, "<NoticeDeadLetterQueue.Arn>", ["<ResponderRole.Arn>"]),
    ):
        assert (deny["Effect"], deny["Principal"], actions(deny)) == (
            "Deny",
            "*",
            ["sqs:SendMessage"],
        )
        assert resources(deny) == [queue]
        condition = deny["Condition"]["ArnNotEquals"]
        assert set(condition["aws:SourceArn"]) == rules
        assert as_list(condition.get("aws:PrincipalArn", [])) == allowed_roles


def test_an_operator_role_may_send_test_notices_when_named():
    arn = "arn:aws:iam::123456789012:role/ray-operators"
    _, deny_notices, deny_dead_letters = Stack({"OperatorRoleArn": arn}).resource_policies()[
        "NoticeQueuePolicy"
    ]["Statement"]
    assert deny_notices["Condition"]["ArnNotEquals"]["aws:PrincipalArn"] == [
        "<NoticeRearmRole.Arn>",
        arn,
    ]
    assert deny_dead_letters["Condition"]["ArnNotEquals"]["aws:PrincipalArn"] == [
        "<ResponderRole.Arn>",
        arn,
    ]


def test_every_rule_matches_only_the_stacks_own_account(stack):
    for name, rule in stack.of_type("AWS::Events::Rule").items():
        assert rule["Properties"]["EventPattern"]["account"] == [ACCOUNT], name


def test_health_rule_takes_only_the_codes_that_take_an_instance_down():
    from spot_responder.notices import INSTANCE_DOWN_CODES

    pattern = Stack(DEFAULTS).resources["HealthScheduledChangeRule"]["Properties"]["EventPattern"]
    assert set(pattern["detail"]["eventTypeCode"]) == INSTANCE_DOWN_CODES


def test_alarm_topic_accepts_only_cloudwatch_of_this_account(stack):
    (statement,) = stack.resource_policies()["AlarmTopicPolicy"]["Statement"]
    assert statement["Principal"] == {"Service": "cloudwatch.amazonaws.com"}
    assert actions(statement) == ["sns:Publish"]
    assert statement["Condition"] == {"StringEquals": {"aws:SourceAccount": ACCOUNT}}


# ---------------------------------------------------------------- the two-minute window


def test_timeouts_fit_the_two_minute_notice_window():
    stack = Stack(DEFAULTS)
    function = stack.resources["ResponderFunction"]["Properties"]
    queue = stack.resources["NoticeQueue"]["Properties"]
    document = stack.resources["RespondDocument"]["Properties"]["Content"]
    event = function["Events"]["Notices"]["Properties"]
    (step,) = document["mainSteps"]
    # AWS: the visibility timeout at least six times the function timeout, plus the window
    assert (
        queue["VisibilityTimeout"]
        >= 6 * function["Timeout"] + event["MaximumBatchingWindowInSeconds"]
    )
    # the function waits for the head node, then still has time to record the outcome
    command_timeout = int(stack.parameters["CommandTimeoutSeconds"])
    max_command_timeout = cfn.template()["Parameters"]["CommandTimeoutSeconds"]["MaxValue"]
    assert command_timeout <= max_command_timeout <= function["Timeout"] - 10
    # the command on the head node ends well inside the notice window
    assert int(step["inputs"]["timeoutSeconds"]) < 120
    # failed records come back after RetryDelaySeconds, not the visibility timeout
    assert int(stack.parameters["RetryDelaySeconds"]) <= 10
    assert event["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert event["MaximumBatchingWindowInSeconds"] <= 1
    redrive = queue["RedrivePolicy"]
    assert redrive["deadLetterTargetArn"] == "<NoticeDeadLetterQueue.Arn>"
    env = cfn.template()["Globals"]["Function"]["Environment"]["Variables"]
    assert int(env["MAX_RECEIVE_COUNT"]) == redrive["maxReceiveCount"]
    # retries are counted in time: the receive count is only a backstop, far beyond the
    # retries that fit in a notice window
    assert redrive["maxReceiveCount"] * int(stack.parameters["RetryDelaySeconds"]) >= 120
    assert env["DEAD_LETTER_QUEUE_URL"] == {"Ref": "NoticeDeadLetterQueue"}


def test_event_source_never_runs_more_invocations_than_are_reserved():
    for reserved in ("10", "2", "100"):
        stack = Stack({"ReservedConcurrency": reserved})
        function = stack.resources["ResponderFunction"]["Properties"]
        event = function["Events"]["Notices"]["Properties"]
        assert function["ReservedConcurrentExecutions"] == reserved
        assert event["ScalingConfig"] == {"MaximumConcurrency": reserved}
    unreserved = Stack({"ReservedConcurrency": "-1"}).resources["ResponderFunction"]
    assert "ReservedConcurrentExecutions" not in unreserved["Properties"]
    assert "ScalingConfig" not in unreserved["Properties"]["Events"]["Notices"]["Properties"]


def test_functions_get_every_setting_the_code_reads():
    env = cfn.template()["Globals"]["Function"]["Environment"]["Variables"]
    assert {
        "LEDGER_TABLE",
        "RESPOND_DOCUMENT",
        "SAFETY_MARGIN_SECONDS",
        "COMMAND_TIMEOUT_SECONDS",
        "CLUSTER_ALLOWLIST",
        "REBALANCE_ACTION",
        "REPLACEMENT_MODE",
        "POOL_UNAVAILABLE_MINUTES",
        "POWERTOOLS_SERVICE_NAME",
        "POWERTOOLS_METRICS_NAMESPACE",
        "POWERTOOLS_LOG_LEVEL",
    } <= set(env)
    assert env["POWERTOOLS_SERVICE_NAME"] == "spot-responder"
    assert env["POWERTOOLS_METRICS_NAMESPACE"] == "SpotResponder"


def test_alarms_watch_the_metrics_the_responder_emits():
    stack = Stack(DEFAULTS)
    watched = {
        (a["Properties"]["Namespace"], a["Properties"]["MetricName"])
        for a in stack.of_type("AWS::CloudWatch::Alarm").values()
    }
    assert {
        ("AWS/SQS", "ApproximateNumberOfMessagesVisible"),
        ("AWS/Lambda", "Errors"),
        ("SpotResponder", "DrainFailures"),
        ("SpotResponder", "HeadNodeNotices"),
        ("SpotResponder", "HeadAgentTooOld"),
    } <= watched
    for alarm in stack.of_type("AWS::CloudWatch::Alarm").values():
        props = alarm["Properties"]
        assert props["AlarmActions"] == ["<AlarmTopic>"]
        if props["Namespace"] == "SpotResponder":
            assert props["Dimensions"] == [{"Name": "service", "Value": "spot-responder"}]


def test_dashboard_shows_interruptions_latency_jobs_replacements_and_failures():
    body = json.loads(Stack(DEFAULTS).resources["Dashboard"]["Properties"]["DashboardBody"])
    # rows are [namespace, name, dim, value] or [".", name, ".", "."] or ["...", {stat}]
    shown = {
        row[1]
        for widget in body["widgets"]
        for row in widget["properties"]["metrics"]
        if isinstance(row[1], str)
    }
    assert {
        "Notices",
        "NodesDrained",
        "DrainLatencyMs",
        "ImpactedJobs",
        "ReplacementsRequested",
        "DrainFailures",
        "ClusterCallFailures",
        "HeadNodeNotices",
    } <= shown
