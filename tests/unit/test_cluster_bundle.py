"""The `ray up` bundle: the rendered cluster-spot.yaml is a config Ray accepts, and every
node starts with what the responder relies on (labels, market, instance profiles)."""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from ray_hooks.bundle import render

HEAD_PROFILE = "arn:aws:iam::123456789012:instance-profile/rsr-RayHeadInstanceProfile-AbC123"
WORKER_PROFILE = "arn:aws:iam::123456789012:instance-profile/rsr-RayWorkerInstanceProfile-DeF4"
INSTANCE_ID = "i-0a1b2c3d4e5f60001"
NETWORK = [
    "--region", "us-west-2",
    "--subnet", "subnet-0123456789abcdef0",
    "--subnet", "subnet-0fedcba9876543210",
    "--head-sg", "sg-0123456789abcdef0",
    "--worker-sg", "sg-0fedcba9876543210",
]  # fmt: skip


def describe_stacks_answer(**extra: str) -> dict[str, Any]:
    """What `aws cloudformation describe-stacks --stack-name ray-spot-responder` prints."""
    outputs = {
        "RayHeadInstanceProfileArn": HEAD_PROFILE,
        "RayWorkerInstanceProfileArn": WORKER_PROFILE,
        "RayUser": "ec2-user",
        "RayPython": "/home/ec2-user/ray-venv/bin/python3",
        "LedgerTableName": "ray-spot-responder-LedgerTable-1X2Y3Z",
        **extra,
    }
    return {
        "Stacks": [
            {
                "StackName": "ray-spot-responder",
                "Outputs": [{"OutputKey": k, "OutputValue": v} for k, v in outputs.items()],
            }
        ]
    }


def rendered(tmp_path: Path, *flags: str, **outputs: str) -> dict[str, Any]:
    """Run the renderer's command line offline (outputs from a file) and load its YAML."""
    answer = tmp_path / "outputs.json"
    answer.write_text(json.dumps(describe_stacks_answer(**outputs)))
    target = tmp_path / "cluster-spot.yaml"
    code = render.main([*NETWORK, "--from-outputs", str(answer), *flags, "-o", str(target)])
    assert code == 0
    config: dict[str, Any] = yaml.safe_load(target.read_text())
    return config


@pytest.fixture
def config(tmp_path: Path) -> dict[str, Any]:
    return rendered(tmp_path)


def workers(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    head = config["head_node_type"]
    return {k: v for k, v in config["available_node_types"].items() if k != head}


def ray_schema() -> dict[str, Any]:
    spec = importlib.util.find_spec("ray")
    assert spec is not None
    assert spec.submodule_search_locations
    path = Path(next(iter(spec.submodule_search_locations))) / "autoscaler" / "ray-schema.json"
    schema: dict[str, Any] = json.loads(path.read_text())
    return schema


# ---------------------------------------------------------------- Ray accepts it


def test_rendered_config_validates_against_the_schema_ray_ships(config):
    jsonschema.validate(config, ray_schema())


def test_rendered_config_passes_rays_own_config_checks(config):
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(config))


def test_autoscaling_knobs_are_the_current_ones(config):
    assert config["upscaling_speed"] == 1.0
    assert config["idle_timeout_minutes"] == 5
    assert "target_utilization_fraction" not in config  # removed from Ray
    assert config["provider"]["cache_stopped_nodes"] is False
    # max_workers leaves room for every node type at its maximum
    assert config["max_workers"] >= sum(t["max_workers"] for t in workers(config).values())


# ---------------------------------------------------------------- node types


def test_head_is_on_demand_and_runs_no_work(config):
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}
    assert "InstanceMarketOptions" not in head["node_config"]
    assert head["labels"]["ray.io/market-type"] == "on-demand"
    assert head["max_workers"] == 0


def test_spot_workers_for_both_architectures_on_the_seed_instance_types(config):
    spot = {
        name: t["node_config"]["InstanceType"]
        for name, t in workers(config).items()
        if t["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot"
    }
    assert spot == {
        "x86_spot_worker": "r7i.2xlarge",
        "x86_spot_worker_2": "r7i.2xlarge",
        "arm_spot_worker": "r8g.2xlarge",
        "arm_spot_worker_2": "r8g.2xlarge",
    }
    for name in spot:
        options = workers(config)[name]["node_config"]["InstanceMarketOptions"]
        assert options["SpotOptions"] == {
            "SpotInstanceType": "one-time",
            "InstanceInterruptionBehavior": "terminate",
        }


def test_every_spot_type_has_an_on_demand_fallback_that_starts_empty(config):
    types = workers(config)
    for spot, fallback in [
        ("x86_spot_worker", "x86_ondemand_worker"),
        ("x86_spot_worker_2", "x86_ondemand_worker"),
        ("arm_spot_worker", "arm_ondemand_worker"),
        ("arm_spot_worker_2", "arm_ondemand_worker"),
    ]:
        spot_cfg, fallback_cfg = types[spot]["node_config"], types[fallback]["node_config"]
        assert "InstanceMarketOptions" not in fallback_cfg
        assert types[fallback]["min_workers"] == 0
        assert types[fallback]["max_workers"] > 0
        assert fallback_cfg["InstanceType"] == spot_cfg["InstanceType"]
        assert fallback_cfg["ImageId"] == spot_cfg["ImageId"]
        assert (
            types[fallback]["labels"]["spot-responder/arch"]
            == (types[spot]["labels"]["spot-responder/arch"])
        )


def test_every_node_type_carries_market_and_group_labels_that_match_its_config(config):
    for name, node_type in config["available_node_types"].items():
        market = node_type["node_config"].get("InstanceMarketOptions", {}).get("MarketType")
        labels = node_type["labels"]
        assert labels["ray.io/market-type"] == ("spot" if market == "spot" else "on-demand")
        assert labels["ray.io/node-group"] == name
        assert labels["spot-responder/arch"] in {"x86_64", "arm64"}


def test_each_worker_type_has_a_resource_marker_of_its_own_name(config):
    # The responder asks for replacement capacity of one type by this marker.
    for name, node_type in workers(config).items():
        assert node_type["resources"][name] == 1
        assert "CPU" not in node_type["resources"]  # filled in from the instance type


def test_nodes_require_imdsv2_and_encrypt_their_volumes(config):
    for node_type in config["available_node_types"].values():
        node = node_type["node_config"]
        assert node["MetadataOptions"]["HttpTokens"] == "required"
        assert all(m["Ebs"]["Encrypted"] for m in node["BlockDeviceMappings"])


def test_nodes_use_the_instance_profiles_of_the_stack(config):
    for name, node_type in config["available_node_types"].items():
        expected = HEAD_PROFILE if name == config["head_node_type"] else WORKER_PROFILE
        assert node_type["node_config"]["IamInstanceProfile"] == {"Arn": expected}


def test_network_and_images_come_from_the_flags(tmp_path):
    config = rendered(tmp_path, "--x86-ami", "ami-0123456789abcdef0", "--arm-ami", "ami-0aaa1111")
    for name, node_type in config["available_node_types"].items():
        node = node_type["node_config"]
        spot = node_type["labels"]["ray.io/market-type"] == "spot"
        if not spot:
            assert node["SubnetIds"] == ["subnet-0123456789abcdef0", "subnet-0fedcba9876543210"]
        sg = "sg-0123456789abcdef0" if name == config["head_node_type"] else "sg-0fedcba9876543210"
        assert node["SecurityGroupIds"] == [sg]
        arm = node_type["labels"]["spot-responder/arch"] == "arm64"
        assert node["ImageId"] == ("ami-0aaa1111" if arm else "ami-0123456789abcdef0")


def test_each_spot_pool_is_one_type_in_one_subnet_so_a_replacement_can_avoid_it(tmp_path, capsys):
    answer = tmp_path / "outputs.json"
    answer.write_text(json.dumps(describe_stacks_answer()))
    target = tmp_path / "c.yaml"
    subnets = ["subnet-0123456789abcdef0:us-west-2a", "subnet-0fedcba9876543210:us-west-2b"]
    flags = [f for subnet in subnets for f in ("--subnet", subnet)]
    code = render.main(
        [*NETWORK[:2], *flags, *NETWORK[6:], "--from-outputs", str(answer), "-o", str(target)]
    )
    assert code == 0, capsys.readouterr().err
    types = workers(yaml.safe_load(target.read_text()))

    for pool, subnet, zone in [
        ("x86_spot_worker", "subnet-0123456789abcdef0", "us-west-2a"),
        ("x86_spot_worker_2", "subnet-0fedcba9876543210", "us-west-2b"),
        ("arm_spot_worker", "subnet-0123456789abcdef0", "us-west-2a"),
        ("arm_spot_worker_2", "subnet-0fedcba9876543210", "us-west-2b"),
    ]:
        assert types[pool]["node_config"]["SubnetIds"] == [subnet]
        assert types[pool]["labels"]["ray.io/availability-zone"] == zone
        assert types[pool]["labels"]["ray.io/node-group"] == pool
        assert types[pool]["resources"] == {
            ("Intel" if pool.startswith("x86") else "Graviton"): 1,
            pool: 1,
        }


def test_a_zone_for_some_subnets_only_is_refused(tmp_path, capsys):
    code = render.main(
        [
            *("--region", "us-west-2", "--subnet", "subnet-0123456789abcdef0:us-west-2a"),
            *("--subnet", "subnet-0fedcba9876543210", *NETWORK[6:]),
            *("--head-instance-profile", HEAD_PROFILE, "--worker-instance-profile", WORKER_PROFILE),
        ]
    )
    assert code == 2
    assert "zone for every --subnet or for none" in capsys.readouterr().err


def test_every_type_has_a_priority_and_spot_outranks_its_on_demand_twin(config):
    types = workers(config)
    for name, node_type in types.items():
        twin = name.replace("spot", "ondemand").removesuffix("_2")
        if node_type["labels"]["ray.io/market-type"] == "spot":
            assert node_type["priority"] > types[twin]["priority"], name
    assert all("priority" in t for t in config["available_node_types"].values())


def test_spot_pools_start_empty_so_an_interrupted_pool_is_not_refilled_behind_our_back(config):
    spot = [t for t in workers(config).values() if t["labels"]["ray.io/market-type"] == "spot"]
    assert spot
    assert all(t["min_workers"] == 0 for t in spot)


def test_a_prebuilt_image_skips_the_install_and_only_checks_the_ray_version(tmp_path):
    config = rendered(
        tmp_path,
        *("--prebuilt-image", "--x86-ami", "ami-0123456789abcdef0", "--arm-ami", "ami-0aaa1111"),
    )
    (check,) = config["setup_commands"]
    assert "pip" not in check
    assert "ray.__version__ != '2.60.0'" in check
    assert check.startswith("/home/ec2-user/ray-venv/bin/python -c")


def test_without_ami_flags_nodes_resolve_the_latest_amazon_linux_at_launch(config):
    images = {t["node_config"]["ImageId"] for t in config["available_node_types"].values()}
    assert images == {
        "resolve:ssm:/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64",
        "resolve:ssm:/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-arm64",
    }


# ---------------------------------------------------------------- what runs on the nodes


def test_ray_hooks_is_mounted_and_put_on_the_path_of_the_documents_interpreter(config):
    (remote, local), *_ = config["file_mounts"].items()
    assert remote == "~/spot-responder/ray_hooks"
    assert (Path(local) / "__init__.py").is_file()
    assert (Path(local) / "bundle" / "render.py").is_file()
    setup = " ".join(config["head_setup_commands"])
    assert "/home/ec2-user/ray-venv/bin/python3 -c" in setup
    assert "spot-responder.pth" in setup
    assert config["head_setup_commands"][-1].endswith('-c "import ray_hooks"')


def test_every_worker_gets_ray_hooks_too_so_tasks_can_read_their_nodes_deadline(config):
    # file_mounts reach every node; the workers put the copy on their interpreter's path
    assert config["worker_setup_commands"] == config["head_setup_commands"]


def test_ray_is_installed_in_the_virtualenv_the_stack_names(config):
    setup = "\n".join(config["setup_commands"])
    assert "python3.12 -m venv /home/ec2-user/ray-venv" in setup
    assert '"ray[default]==2.60.0"' in setup
    assert config["auth"]["ssh_user"] == "ec2-user"


def test_head_setup_puts_ray_hooks_on_the_interpreters_path(tmp_path):
    # GIVEN a cluster config whose Ray interpreter is a real virtualenv here
    venv = tmp_path / "ray-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    config = rendered(tmp_path, "--ray-python", f"{venv}/bin/python3")
    home = tmp_path / "home"
    (home / "spot-responder" / "ray_hooks").mkdir(parents=True)
    (home / "spot-responder" / "ray_hooks" / "__init__.py").write_text("")
    # WHEN the head setup commands run as the Ray user (HOME = its home)
    for command in config["head_setup_commands"]:
        env = {**os.environ, "HOME": str(home)}
        subprocess.run(["bash", "-c", command], check=True, env=env, cwd=tmp_path)
    # THEN that interpreter imports ray_hooks from the mounted copy
    where = subprocess.run(
        [f"{venv}/bin/python3", "-c", "import ray_hooks; print(ray_hooks.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        cwd="/",
    ).stdout.strip()
    assert where == str(home / "spot-responder" / "ray_hooks" / "__init__.py")


FAKE_CURL = textwrap.dedent(
    """\
    #!/usr/bin/env python3
    # IMDSv2 as EC2 answers it: a PUT for a token, then GETs that must carry the token.
    import sys
    args = sys.argv[1:]
    url = args[-1]
    headers = [args[i + 1] for i, a in enumerate(args) if a == "-H"]
    base = "http://169.254.169.254/latest/"
    if "-X" in args and args[args.index("-X") + 1] == "PUT":
        ok = url == base + "api/token" and any(
            h.startswith("X-aws-ec2-metadata-token-ttl-seconds:") for h in headers)
        print("T0KEN" if ok else "", end="")
        sys.exit(0 if ok else 22)
    if "X-aws-ec2-metadata-token: T0KEN" not in headers:
        sys.exit(22)  # IMDSv2 refuses requests without the token (401), curl -f exits 22
    answers = {"instance-id": "%(iid)s", "placement/availability-zone": "us-west-2b",
               "instance-life-cycle": "%(market)s"}
    key = url.removeprefix(base + "meta-data/")
    if key not in answers:
        sys.exit(22)
    print(answers[key], end="")
    """
)
FAKE_RAY = textwrap.dedent(
    """\
    #!/usr/bin/env python3
    import json, os, sys
    with open(os.environ["RAY_CALLS"], "a") as calls:
        env = {k: v for k, v in os.environ.items() if k.startswith("RAY_NODE_")}
        calls.write(json.dumps({"argv": sys.argv[1:], "env": env}) + "\\n")
    """
)


def run_start_commands(
    tmp_path: Path, commands: list[str], market: str = "spot"
) -> list[dict[str, Any]]:
    """Run a node's start commands with bash, IMDSv2 and `ray` stood in for."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "curl").write_text(FAKE_CURL % {"iid": INSTANCE_ID, "market": market})
    (bin_dir / "curl").chmod(0o755)
    calls = tmp_path / "ray-calls.jsonl"
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "RAY_CALLS": str(calls),
        "RAY_HEAD_IP": "10.0.1.10",
    }
    for command in commands:
        subprocess.run(["bash", "-c", command], check=True, env=env)
    return [json.loads(line) for line in calls.read_text().splitlines()]


def config_with_fake_ray(tmp_path: Path, **outputs: str) -> dict[str, Any]:
    venv_bin = tmp_path / "ray-venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "ray").write_text(FAKE_RAY)
    (venv_bin / "ray").chmod(0o755)
    return rendered(tmp_path, "--ray-python", f"{venv_bin}/python3", **outputs)


def labels_of(argv: list[str]) -> dict[str, str]:
    from ray._private.label_utils import parse_node_labels_string

    (flag,) = [a for a in argv if a.startswith("--labels=")]
    labels: dict[str, str] = parse_node_labels_string(flag.removeprefix("--labels="))
    return labels


@pytest.mark.parametrize("market", ["spot", "on-demand"])
def test_worker_starts_with_its_instance_id_label_read_from_imdsv2(tmp_path, market):
    # GIVEN the rendered config, on an EC2 worker whose metadata service wants a token
    config = config_with_fake_ray(tmp_path)
    # WHEN the worker start commands run
    stop, start = run_start_commands(tmp_path, config["worker_start_ray_commands"], market)
    # THEN ray stops, then starts joined to the head with the instance id as a node label
    assert stop["argv"] == ["stop"]
    assert start["argv"][0] == "start"
    assert "--address=10.0.1.10:6379" in start["argv"]
    assert labels_of(start["argv"]) == {"spot-responder/instance-id": INSTANCE_ID}
    # and with Ray's market and zone labels from the instance itself
    assert start["env"] == {"RAY_NODE_MARKET_TYPE": market, "RAY_NODE_ZONE": "us-west-2b"}


def test_worker_does_not_start_ray_without_its_instance_id(tmp_path):
    # GIVEN a metadata service that refuses every request (IMDS off or unreachable)
    config = config_with_fake_ray(tmp_path)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "curl").write_text("#!/bin/sh\nexit 22\n")
    (bin_dir / "curl").chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "RAY_CALLS": str(tmp_path / "calls")}
    # WHEN the start command runs THEN it fails and Ray is not started unlabelled
    start = config["worker_start_ray_commands"][-1]
    assert subprocess.run(["bash", "-c", start], env=env, check=False).returncode != 0
    assert not (tmp_path / "calls").exists()


def test_head_starts_with_the_autoscaler_config_and_its_instance_id_label(tmp_path):
    config = config_with_fake_ray(tmp_path)
    _, start = run_start_commands(tmp_path, config["head_start_ray_commands"], "on-demand")
    assert start["argv"][:2] == ["start", "--head"]
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in start["argv"]
    assert labels_of(start["argv"]) == {"spot-responder/instance-id": INSTANCE_ID}
    assert not any(a.startswith("--system-config") for a in start["argv"])


def test_spill_bucket_turns_on_object_spilling_to_s3(tmp_path):
    # GIVEN a stack deployed with SpillBucketName
    config = config_with_fake_ray(tmp_path, SpillBucketName="my-ray-spill")
    # THEN smart_open is installed and the head starts with S3 object spilling
    assert '"smart_open[s3]"' in config["setup_commands"][-1]
    _, start = run_start_commands(tmp_path, config["head_start_ray_commands"], "on-demand")
    (flag,) = [a for a in start["argv"] if a.startswith("--system-config=")]
    system_config = json.loads(flag.removeprefix("--system-config="))
    spilling = json.loads(system_config["object_spilling_config"])
    assert spilling == {
        "type": "smart_open",
        "params": {"uri": "s3://my-ray-spill/ray-spill/ray-on-aws"},
    }


# ---------------------------------------------------------------- the renderer itself


def test_renderer_reads_cloudformation_only_when_not_given_the_values():
    args = render.parse_args([*NETWORK])
    asked: list[tuple[str, str]] = []

    def fetch(stack: str, region: str) -> dict[str, str]:
        asked.append((stack, region))
        return {
            "RayHeadInstanceProfileArn": HEAD_PROFILE,
            "RayWorkerInstanceProfileArn": WORKER_PROFILE,
        }

    assert render.stack_values(args, fetch).head_instance_profile_arn == HEAD_PROFILE
    assert asked == [("ray-spot-responder", "us-west-2")]

    offline = render.parse_args(
        [
            *NETWORK,
            "--head-instance-profile",
            HEAD_PROFILE,
            "--worker-instance-profile",
            WORKER_PROFILE,
        ]
    )

    def no_network(stack: str, region: str) -> dict[str, str]:
        raise AssertionError("the renderer called CloudFormation though it had the values")

    assert render.stack_values(offline, no_network).worker_instance_profile_arn == WORKER_PROFILE


def test_renderer_accepts_every_shape_describe_stacks_output_comes_in(tmp_path):
    full = describe_stacks_answer()
    shapes = [full, full["Stacks"][0], full["Stacks"][0]["Outputs"]]
    for i, shape in enumerate(shapes):
        path = tmp_path / f"{i}.json"
        path.write_text(json.dumps(shape))
        assert render.read_outputs_file(path)["RayWorkerInstanceProfileArn"] == WORKER_PROFILE
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"RayHeadInstanceProfileArn": HEAD_PROFILE}))
    assert render.read_outputs_file(plain) == {"RayHeadInstanceProfileArn": HEAD_PROFILE}


@pytest.mark.parametrize(
    "flags",
    [
        ["--subnet", "subnet-0123456789abcdef0; curl evil"],
        ["--x86-ami", "ami-$(reboot)"],
        ["--cluster-name", "a b"],
        ["--ray-python", "/home/ec2-user/ray venv/bin/python3"],
        ["--spot-min-workers", "9"],
    ],
)
def test_renderer_refuses_values_that_would_break_the_config_or_the_shell(tmp_path, flags, capsys):
    answer = tmp_path / "outputs.json"
    answer.write_text(json.dumps(describe_stacks_answer()))
    code = render.main([*NETWORK, "--from-outputs", str(answer), *flags, "-o", str(tmp_path / "x")])
    assert code == 2
    assert capsys.readouterr().err.startswith("render: ")
    assert not (tmp_path / "x").exists()


def test_renderer_says_which_output_is_missing(tmp_path, capsys):
    answer = tmp_path / "outputs.json"
    answer.write_text(json.dumps({"RayHeadInstanceProfileArn": HEAD_PROFILE}))
    assert render.main([*NETWORK, "--from-outputs", str(answer)]) == 2
    assert "RayWorkerInstanceProfileArn" in capsys.readouterr().err


def test_renderer_runs_as_a_module_and_writes_the_header(tmp_path):
    answer = tmp_path / "outputs.json"
    answer.write_text(json.dumps(describe_stacks_answer()))
    out = subprocess.run(
        [sys.executable, "-m", "ray_hooks.bundle.render", *NETWORK, "--from-outputs", str(answer)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.startswith("# Ray cluster ray-on-aws with spot workers")
    assert "ray up -y" in out
    assert yaml.safe_load(out)["cluster_name"] == "ray-on-aws"


def test_stress_job_defaults_are_the_seed_workload():
    from ray_hooks.bundle import stress_job

    args = stress_job.parse_args([])
    assert (args.tasks, args.seconds, args.max_retries) == (512, 120.0, 3)
    assert stress_job.heavy_task._default_options["num_cpus"] == 1


def test_worker_start_command_is_one_shell_line_per_step(config):
    # The autoscaler runs each command with `bash -c`; a syntax error would only show on EC2.
    for command in config["worker_start_ray_commands"] + config["head_start_ray_commands"]:
        subprocess.run(["bash", "-n", "-c", command], check=True)
        assert shlex.split(command)


def test_with_an_allowlist_each_cluster_gets_the_head_profile_of_its_own_role():
    # a stack with ClusterAllowlist "ray-on-aws,batch-2" has no head profile for every
    # cluster, one per listed cluster (see template.yaml, Fn::ForEach::ClusterHeads)
    own = "arn:aws:iam::123456789012:instance-profile/rsr-RayHeadInstanceProfileForbatch2-X"
    other = "arn:aws:iam::123456789012:instance-profile/rsr-RayHeadInstanceProfileForrayonaws-Y"
    outputs = {
        "RayHeadInstanceProfileArnForrayonaws": other,
        "RayHeadInstanceProfileArnForbatch2": own,
        "RayWorkerInstanceProfileArn": WORKER_PROFILE,
    }

    def values(*flags: str) -> render.StackValues:
        return render.stack_values(
            render.parse_args([*NETWORK, *flags]), lambda s, r: dict(outputs)
        )

    assert values("--cluster-name", "batch-2").head_instance_profile_arn == own
    assert values("--cluster-name", "ray-on-aws").head_instance_profile_arn == other
    # an explicit flag still wins
    flagged = values("--cluster-name", "batch-2", "--head-instance-profile", HEAD_PROFILE)
    assert flagged.head_instance_profile_arn == HEAD_PROFILE
    # a cluster the stack does not list gets no other cluster's role, and is told why
    with pytest.raises(render.RenderError, match="add the cluster to the stack's ClusterAllowlist"):
        values("--cluster-name", "ad-hoc")
