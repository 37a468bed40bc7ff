"""Render cluster-spot.yaml for `ray up` from the stack outputs and a few flags.

    python -m ray_hooks.bundle.render --stack-name ray-spot-responder --region us-west-2 \\
        --subnet subnet-0abc... --head-sg sg-0abc... --worker-sg sg-0def... \\
        [--x86-ami ami-...] [--arm-ami ami-...] [--from-outputs outputs.json] \\
        -o cluster-spot.yaml

Where the stack's values come from, first match wins:
1. flags (--head-instance-profile, --worker-instance-profile, --spill-bucket, ...);
2. --from-outputs FILE: what `aws cloudformation describe-stacks` printed (the whole
   answer, its Outputs list, or a plain {"OutputKey": "value"} mapping);
3. only when neither gives the instance profiles: CloudFormation DescribeStacks on
   --stack-name, with boto3.
So the renderer runs offline whenever it is given the values.

Without --x86-ami/--arm-ami the nodes use the latest Amazon Linux 2023 AMI, resolved
by EC2 at launch from the public SSM parameter, and install Python and Ray at boot. With
--prebuilt-image the AMIs given already hold what setup_commands would install (an image
made from a node this bundle set up): a node only checks its Ray version, and joins in
the spot warning's two minutes (see the README's join-time figures).

Pools: each spot type of the template becomes one node type per subnet (`--subnet
subnet-...[:zone]`, one subnet per availability zone): `x86_spot_worker` for the first,
`x86_spot_worker_2` for the second, and so on, each with its own marker resource, its
`ray.io/node-group` and, when the zone is given, its `ray.io/availability-zone` label.
Ray's AWS provider always launches into a type's first subnet, so only one subnet per
type lets the responder steer a replacement away from the zone just interrupted. The
on-demand twins keep every subnet. Every type has a `priority` (autoscaler v2 otherwise
breaks ties by config order): spot above its on-demand twin.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

TEMPLATE = Path(__file__).with_name("cluster-spot.yaml")
RAY_VERSION = "2.60.0"
SPILL_PREFIX = "ray-spill"
AL2023_AMI = "resolve:ssm:/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-{arch}"

# The node types of cluster-spot.yaml (names are the custom resource markers too).
HEAD_NODE_TYPE = "ray.head.default"
SPOT_WORKER_TYPES = ("x86_spot_worker", "arm_spot_worker")
FALLBACK_WORKER_TYPES = ("x86_ondemand_worker", "arm_ondemand_worker")
SPOT_PRIORITY = 20
ON_DEMAND_PRIORITY = 10
NODE_GROUP_LABEL = "ray.io/node-group"
ZONE_LABEL = "ray.io/availability-zone"
#: What a node of a pre-built image runs instead of installing (it has Ray already).
PREBUILT_SETUP = (
    '${RAY_VENV}/bin/python -c "import ray, sys; '
    "sys.exit(ray.__version__ != '${RAY_VERSION}' and 'the image has Ray ' + ray.__version__)\""
)

_PLACEHOLDER = re.compile(r"\$\{([A-Z0-9_]+)\}")
_PATTERNS = {
    "cluster name": r"[A-Za-z0-9_.-]{1,64}",
    "region": r"[a-z]{2}(-[a-z]+)+-[0-9]",
    "subnet": r"subnet-[0-9a-f]{8,17}",
    "zone": r"[a-z]{2}(-[a-z]+)+-[0-9][a-z]",
    "security group": r"sg-[0-9a-f]{8,17}",
    "AMI": r"ami-[0-9a-f]{8,17}|resolve:ssm:/[A-Za-z0-9_./-]+",
    "instance type": r"[a-z][a-z0-9-]*\.[a-z0-9]+",
    "instance profile ARN": r"arn:aws[a-z-]*:iam::[0-9]{12}:instance-profile/[A-Za-z0-9+=,.@_/-]+",
    "Ray user": r"[a-z_][a-z0-9_-]{0,31}",
    "Ray Python": r"/[A-Za-z0-9._/-]+/bin/python3(\.[0-9]+)?",
    "S3 bucket": r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]",
    "local path": r"/[A-Za-z0-9._/+@-]+",
}


class RenderError(ValueError):
    """A value cannot go into the cluster config, or the stack outputs lack one."""


def _checked(kind: str, value: str) -> str:
    if not re.fullmatch(_PATTERNS[kind], value):
        raise RenderError(f"not a valid {kind}: {value!r}")
    return value


HEAD_PROFILE_OUTPUT = "RayHeadInstanceProfileArn"


@dataclass(frozen=True)
class StackValues:
    """What the cluster needs from the Ray Spot Responder stack."""

    head_instance_profile_arn: str
    worker_instance_profile_arn: str
    ray_user: str = "ec2-user"
    ray_python: str = "/home/ec2-user/ray-venv/bin/python3"
    spill_bucket: str | None = None
    stack_name: str | None = None

    @classmethod
    def from_outputs(
        cls,
        outputs: Mapping[str, str],
        stack_name: str | None = None,
        cluster_name: str | None = None,
    ) -> StackValues:
        """The head profile: the stack's one for every cluster (or a flag's), else the one
        a ClusterAllowlist gives this cluster (RayHeadInstanceProfileArnFor<its name
        without punctuation>), whose role reaches only that cluster's workers."""
        own = f"{HEAD_PROFILE_OUTPUT}For{re.sub('[^A-Za-z0-9]', '', cluster_name or '')}"
        head = outputs.get(HEAD_PROFILE_OUTPUT) or (outputs.get(own) if cluster_name else None)
        if head is None:
            listed = sorted(k for k in outputs if k.startswith(f"{HEAD_PROFILE_OUTPUT}For"))
            if listed:
                raise RenderError(
                    f"the stack has no head instance profile for cluster {cluster_name!r} "
                    f"(no output {own}; it has {', '.join(listed)}): add the cluster to "
                    "the stack's ClusterAllowlist"
                )
            raise RenderError(f"the stack outputs have no {HEAD_PROFILE_OUTPUT}")
        try:
            worker = outputs["RayWorkerInstanceProfileArn"]
        except KeyError as missing:
            raise RenderError(f"the stack outputs have no {missing.args[0]}") from None
        return cls(
            head_instance_profile_arn=head,
            worker_instance_profile_arn=worker,
            ray_user=outputs.get("RayUser", cls.ray_user),
            ray_python=outputs.get("RayPython", cls.ray_python),
            spill_bucket=outputs.get("SpillBucketName") or None,
            stack_name=stack_name,
        )


@dataclass(frozen=True)
class ClusterOptions:
    """The flags: network, images, sizes."""

    region: str
    subnet_ids: Sequence[str]
    head_security_group_ids: Sequence[str]
    worker_security_group_ids: Sequence[str]
    cluster_name: str = "ray-on-aws"
    x86_ami: str = AL2023_AMI.format(arch="x86_64")
    arm_ami: str = AL2023_AMI.format(arch="arm64")
    head_instance_type: str = "m7i.xlarge"
    x86_instance_type: str = "r7i.2xlarge"
    arm_instance_type: str = "r8g.2xlarge"
    #: 0: a spot type's min_workers is refilled by the autoscaler in the very pool that was
    #: just interrupted as soon as its node drains (v2 does not count a draining node).
    spot_min_workers: int = 0
    spot_max_workers: int = 8
    fallback_max_workers: int = 4
    worker_volume_gb: int = 300
    upscaling_speed: float = 1.0
    idle_timeout_minutes: int = 5
    ray_version: str = RAY_VERSION
    #: The zone of each subnet, same order (empty: unknown; the zone label is left out).
    subnet_zones: Sequence[str] = ()
    #: The AMIs already hold Ray and its packages (made from a node of this bundle).
    prebuilt_image: bool = False
    ray_hooks_source: Path = field(default_factory=lambda: Path(__file__).resolve().parent.parent)


def placeholders(options: ClusterOptions, stack: StackValues) -> dict[str, str]:
    """Every ${NAME} of the template and its text, each value checked first."""
    if not options.subnet_ids:
        raise RenderError("give at least one --subnet")
    if not options.head_security_group_ids or not options.worker_security_group_ids:
        raise RenderError("give at least one --head-sg and one --worker-sg")
    if not 0 <= options.spot_min_workers <= options.spot_max_workers:
        raise RenderError("need 0 <= spot min workers <= spot max workers")
    if options.fallback_max_workers < 0 or options.worker_volume_gb < 8:
        raise RenderError("fallback max workers must be >= 0 and the volume >= 8 GB")
    if not re.fullmatch(r"[0-9]+\.[0-9]+\.[0-9]+", options.ray_version):
        raise RenderError(f"not a Ray version: {options.ray_version!r}")
    ray_python = _checked("Ray Python", stack.ray_python)
    spill_bucket = stack.spill_bucket and _checked("S3 bucket", stack.spill_bucket)
    total = 2 * (len(options.subnet_ids) * options.spot_max_workers + options.fallback_max_workers)

    def ids(kind: str, values: Sequence[str]) -> str:
        return json.dumps([_checked(kind, v) for v in values])

    return {
        "CLUSTER_NAME": _checked("cluster name", options.cluster_name),
        "REGION": _checked("region", options.region),
        "MAX_WORKERS": str(total),
        "UPSCALING_SPEED": repr(float(options.upscaling_speed)),
        "IDLE_TIMEOUT_MINUTES": str(int(options.idle_timeout_minutes)),
        "RAY_USER": _checked("Ray user", stack.ray_user),
        "RAY_PYTHON": ray_python,
        "RAY_VENV": ray_python.rsplit("/bin/", 1)[0],
        "RAY_VERSION": options.ray_version,
        "RAY_HOOKS_SOURCE": _checked("local path", str(options.ray_hooks_source)),
        "EXTRA_PIP_PACKAGES": ' "smart_open[s3]"' if spill_bucket else "",
        "HEAD_SYSTEM_CONFIG": _spilling_flag(spill_bucket, options.cluster_name),
        "SUBNET_IDS": ids("subnet", options.subnet_ids),
        "HEAD_SECURITY_GROUP_IDS": ids("security group", options.head_security_group_ids),
        "WORKER_SECURITY_GROUP_IDS": ids("security group", options.worker_security_group_ids),
        "HEAD_INSTANCE_PROFILE_ARN": _checked(
            "instance profile ARN", stack.head_instance_profile_arn
        ),
        "WORKER_INSTANCE_PROFILE_ARN": _checked(
            "instance profile ARN", stack.worker_instance_profile_arn
        ),
        "HEAD_INSTANCE_TYPE": _checked("instance type", options.head_instance_type),
        "X86_INSTANCE_TYPE": _checked("instance type", options.x86_instance_type),
        "ARM_INSTANCE_TYPE": _checked("instance type", options.arm_instance_type),
        "X86_AMI": _checked("AMI", options.x86_ami),
        "ARM_AMI": _checked("AMI", options.arm_ami),
        "SPOT_MIN_WORKERS": str(options.spot_min_workers),
        "SPOT_MAX_WORKERS": str(options.spot_max_workers),
        "FALLBACK_MAX_WORKERS": str(options.fallback_max_workers),
        "WORKER_VOLUME_GB": str(options.worker_volume_gb),
    }


def _spilling_flag(bucket: str | None, cluster_name: str) -> str:
    """`ray start --head` flag that spills objects to S3 (smart_open), or nothing."""
    if not bucket:
        return ""
    spilling = {
        "type": "smart_open",
        "params": {"uri": f"s3://{bucket}/{SPILL_PREFIX}/{cluster_name}"},
    }
    system_config = {"object_spilling_config": json.dumps(spilling, separators=(",", ":"))}
    return f" --system-config='{json.dumps(system_config, separators=(',', ':'))}'"


def render(
    options: ClusterOptions, stack: StackValues, template: Path = TEMPLATE
) -> dict[str, Any]:
    """The cluster config as data."""
    values = placeholders(options, stack)
    text = template.read_text()
    unknown = sorted(set(_PLACEHOLDER.findall(text)) - values.keys())
    if unknown:
        raise RenderError(f"the template has placeholders without a value: {unknown}")
    config: dict[str, Any] = yaml.safe_load(_PLACEHOLDER.sub(lambda m: values[m.group(1)], text))
    config["available_node_types"] = _pools(config["available_node_types"], options)
    if options.prebuilt_image:
        config["setup_commands"] = [_PLACEHOLDER.sub(lambda m: values[m.group(1)], PREBUILT_SETUP)]
    return config


def _pools(types: dict[str, Any], options: ClusterOptions) -> dict[str, Any]:
    """Each spot type once per subnet, and a priority on every type (spot above on-demand)."""
    zones = list(options.subnet_zones) or [""] * len(options.subnet_ids)
    if len(zones) != len(options.subnet_ids):
        raise RenderError("give a zone for every subnet or for none")
    pools: dict[str, Any] = {}
    for name, spec in types.items():
        if name not in SPOT_WORKER_TYPES:
            spec.setdefault("priority", ON_DEMAND_PRIORITY if name != HEAD_NODE_TYPE else 0)
            pools[name] = spec
            continue
        for index, (subnet, zone) in enumerate(zip(options.subnet_ids, zones, strict=True)):
            pool = name if index == 0 else f"{name}_{index + 1}"
            pools[pool] = _spot_pool(spec, name, pool, subnet, zone)
    return pools


def _spot_pool(
    spec: dict[str, Any], name: str, pool: str, subnet: str, zone: str
) -> dict[str, Any]:
    copied: dict[str, Any] = yaml.safe_load(yaml.safe_dump(spec))
    resources = copied["resources"]
    resources[pool] = resources.pop(name)
    copied["labels"][NODE_GROUP_LABEL] = pool
    if zone:
        copied["labels"][ZONE_LABEL] = zone
    copied["node_config"]["SubnetIds"] = [subnet]
    copied["priority"] = SPOT_PRIORITY
    return copied


def render_text(options: ClusterOptions, stack: StackValues, template: Path = TEMPLATE) -> str:
    """The cluster config as the YAML file `ray up` reads."""
    config = render(options, stack, template)
    source = f"stack {stack.stack_name}" if stack.stack_name else "the given stack values"
    header = (
        f"# Ray cluster {options.cluster_name} with spot workers, for Ray Spot Responder.\n"
        f"# Rendered by `python -m ray_hooks.bundle.render` from {source}\n"
        f"# (template: ray_hooks/bundle/cluster-spot.yaml). Start it with\n"
        f"#   ray up -y <this file>\n"
    )
    return header + yaml.safe_dump(config, sort_keys=False, width=1000)


def read_outputs_file(path: Path) -> dict[str, str]:
    """Stack outputs from a file `aws cloudformation describe-stacks` wrote."""
    data: Any = json.loads(path.read_text())
    if isinstance(data, dict) and "Stacks" in data:
        data = data["Stacks"][0].get("Outputs", [])
    if isinstance(data, dict) and "Outputs" in data:
        data = data["Outputs"]
    if isinstance(data, list):
        return {str(o["OutputKey"]): str(o["OutputValue"]) for o in data}
    if isinstance(data, dict):
        return {str(k): str(v) for k, v in data.items()}
    raise RenderError(f"{path}: not stack outputs")


def fetch_outputs(stack_name: str, region: str) -> dict[str, str]:
    """Stack outputs from CloudFormation (the only network call of the renderer)."""
    try:
        import boto3
    except ImportError as exc:  # pragma: no cover - boto3 is in the project's requirements
        raise RenderError("reading the stack needs boto3 (or pass --from-outputs)") from exc
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        cloudformation = boto3.client("cloudformation", region_name=region)
        stacks = cloudformation.describe_stacks(StackName=stack_name)["Stacks"]
    except (BotoCoreError, ClientError) as exc:
        raise RenderError(f"cannot read the outputs of stack {stack_name}: {exc}") from exc
    return {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs", [])}


def stack_values(
    args: argparse.Namespace,
    fetch: Callable[[str, str], dict[str, str]] = fetch_outputs,
) -> StackValues:
    """The stack's values: flags, else --from-outputs, else CloudFormation."""
    outputs: dict[str, str] = {}
    if args.from_outputs:
        outputs = read_outputs_file(Path(args.from_outputs))
    elif not (args.head_instance_profile and args.worker_instance_profile):
        outputs = fetch(args.stack_name, args.region)
    flags = {
        "RayHeadInstanceProfileArn": args.head_instance_profile,
        "RayWorkerInstanceProfileArn": args.worker_instance_profile,
        "RayUser": args.ray_user,
        "RayPython": args.ray_python,
        "SpillBucketName": args.spill_bucket,
    }
    outputs.update({k: v for k, v in flags.items() if v is not None})
    return StackValues.from_outputs(
        outputs, stack_name=args.stack_name, cluster_name=args.cluster_name
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m ray_hooks.bundle.render",
        description="Render cluster-spot.yaml (ray up) for a cluster served by Ray Spot Responder.",
    )
    stack = parser.add_argument_group("the stack")
    stack.add_argument("--stack-name", default="ray-spot-responder")
    stack.add_argument("--region", required=True)
    stack.add_argument("--from-outputs", metavar="FILE", help="describe-stacks JSON")
    stack.add_argument("--head-instance-profile", metavar="ARN")
    stack.add_argument("--worker-instance-profile", metavar="ARN")
    stack.add_argument("--ray-user")
    stack.add_argument("--ray-python")
    stack.add_argument("--spill-bucket", help="S3 bucket for object spilling ('' for none)")
    net = parser.add_argument_group("network and images")
    net.add_argument(
        "--subnet",
        action="append",
        required=True,
        dest="subnets",
        metavar="SUBNET[:ZONE]",
        help="one per availability zone; each spot type gets one pool per subnet",
    )
    net.add_argument("--head-sg", action="append", required=True, dest="head_sgs")
    net.add_argument("--worker-sg", action="append", required=True, dest="worker_sgs")
    net.add_argument("--x86-ami", default=ClusterOptions.x86_ami)
    net.add_argument("--arm-ami", default=ClusterOptions.arm_ami)
    net.add_argument(
        "--prebuilt-image",
        action="store_true",
        help="the AMIs already hold Ray (made from a node of this bundle): nodes skip the "
        "install and can join within the two-minute spot warning",
    )
    size = parser.add_argument_group("cluster")
    size.add_argument("--cluster-name", default=ClusterOptions.cluster_name)
    size.add_argument("--head-instance-type", default=ClusterOptions.head_instance_type)
    size.add_argument("--x86-instance-type", default=ClusterOptions.x86_instance_type)
    size.add_argument("--arm-instance-type", default=ClusterOptions.arm_instance_type)
    size.add_argument(
        "--spot-min-workers",
        type=int,
        default=ClusterOptions.spot_min_workers,
        help="per spot pool; above 0 the autoscaler refills an interrupted pool by itself",
    )
    size.add_argument("--spot-max-workers", type=int, default=ClusterOptions.spot_max_workers)
    size.add_argument(
        "--fallback-max-workers", type=int, default=ClusterOptions.fallback_max_workers
    )
    size.add_argument("--worker-volume-gb", type=int, default=ClusterOptions.worker_volume_gb)
    size.add_argument("--upscaling-speed", type=float, default=ClusterOptions.upscaling_speed)
    size.add_argument(
        "--idle-timeout-minutes", type=int, default=ClusterOptions.idle_timeout_minutes
    )
    parser.add_argument("-o", "--output", default="-", help="file to write ('-': stdout)")
    return parser.parse_args(argv)


def _subnets_and_zones(values: Sequence[str]) -> tuple[list[str], list[str]]:
    """`subnet-...` or `subnet-...:us-west-2a` flags: the subnets, and their zones if given."""
    pairs = [value.partition(":")[::2] for value in values]
    zones = [_checked("zone", zone) for _, zone in pairs if zone]
    if zones and len(zones) != len(pairs):
        raise RenderError("give a zone for every --subnet or for none")
    return [subnet for subnet, _ in pairs], zones


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        stack = stack_values(args)
        subnets, zones = _subnets_and_zones(args.subnets)
        options = ClusterOptions(
            region=args.region,
            subnet_ids=subnets,
            subnet_zones=zones,
            prebuilt_image=args.prebuilt_image,
            head_security_group_ids=args.head_sgs,
            worker_security_group_ids=args.worker_sgs,
            cluster_name=args.cluster_name,
            x86_ami=args.x86_ami,
            arm_ami=args.arm_ami,
            head_instance_type=args.head_instance_type,
            x86_instance_type=args.x86_instance_type,
            arm_instance_type=args.arm_instance_type,
            spot_min_workers=args.spot_min_workers,
            spot_max_workers=args.spot_max_workers,
            fallback_max_workers=args.fallback_max_workers,
            worker_volume_gb=args.worker_volume_gb,
            upscaling_speed=args.upscaling_speed,
            idle_timeout_minutes=args.idle_timeout_minutes,
        )
        text = render_text(options, stack)
    except (RenderError, OSError, json.JSONDecodeError) as exc:
        print(f"render: {exc}", file=sys.stderr)
        return 2
    if args.output == "-":
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text)
        print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
