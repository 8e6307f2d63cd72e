"""The CRD in crds/ is exactly what the models generate, and its schema is structural."""

from __future__ import annotations

from typing import Any

import yaml
from click.testing import CliRunner

from nas_operator.cli import main
from nas_operator.resource.crd import crd, crd_yaml

from .conftest import ROOT

CRD_FILE = ROOT / "crds" / "nas.operator.dev_nasexperiments.yaml"


def test_crds_folder_matches_the_models() -> None:
    assert CRD_FILE.read_text() == crd_yaml(), (
        "crds/ drifted from spec.py: run `nasctl crd > " + str(CRD_FILE.relative_to(ROOT)) + "`"
    )


def test_nasctl_crd_prints_it() -> None:
    result = CliRunner().invoke(main, ["crd"])
    assert result.exit_code == 0 and result.output == crd_yaml()


def _walk(node: Any, path: str = "") -> list[str]:
    """Nodes that break the structural-schema rules Kubernetes enforces."""
    problems = []
    if isinstance(node, dict):
        if "$ref" in node or "anyOf" in node or "oneOf" in node or "allOf" in node:
            problems.append(f"{path}: uses $ref/anyOf/oneOf/allOf")
        typed = (
            "type" in node or node.get("x-kubernetes-preserve-unknown-fields") or node.get("x-kubernetes-int-or-string")
        )
        if not typed:
            problems.append(f"{path}: no type")
        for key, child in node.get("properties", {}).items():
            problems += _walk(child, f"{path}.{key}")
        if isinstance(node.get("items"), dict):
            problems += _walk(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            problems += _walk(node["additionalProperties"], f"{path}{{}}")
    return problems


def test_schema_is_structural_with_immutability_and_columns() -> None:
    definition = crd()
    version = definition["spec"]["versions"][0]
    schema = version["schema"]["openAPIV3Schema"]
    assert _walk(schema) == []
    spec = schema["properties"]["spec"]
    assert spec["required"] == ["parameters", "objectives", "budget", "trial"]
    for field in ("parameters", "objectives", "algorithm"):
        assert spec["properties"][field]["x-kubernetes-validations"][0]["rule"] == "self == oldSelf"
    assert "x-kubernetes-validations" not in spec["properties"]["budget"]  # the budget may change
    assert spec["properties"]["budget"]["properties"]["maxDuration"]["x-kubernetes-int-or-string"] is True
    assert spec["properties"]["objectives"]["items"]["properties"]["goal"]["enum"] == ["maximize", "minimize"]
    assert version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]][:4] == ["Phase", "Trials", "Max", "Running"]
    assert definition["spec"]["names"]["shortNames"] == ["nasx"]
    yaml.safe_load(crd_yaml())


def test_limits_and_grammars_reach_the_schema() -> None:
    """One source of numbers: the CRD carries what `nasctl validate` checks."""
    from nas_operator.resource import limits
    from nas_operator.resource.quantities import QUANTITY_REGEX

    schema = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert schema["x-kubernetes-validations"][0]["rule"] == f"self.metadata.name.size() <= {limits.MAX_EXPERIMENT_NAME}"
    spec = schema["properties"]["spec"]["properties"]
    assert spec["parameters"]["maxItems"] == limits.MAX_PARAMETERS
    assert spec["objectives"]["maxItems"] == limits.MAX_OBJECTIVES
    assert spec["budget"]["properties"]["parallelism"]["maximum"] == limits.MAX_PARALLELISM
    assert spec["budget"]["properties"]["maxTrials"]["maximum"] == limits.MAX_TRIALS
    trial = spec["trial"]["properties"]
    assert trial["args"]["items"]["maxLength"] == limits.MAX_TEMPLATE_LENGTH
    assert trial["resources"]["properties"]["cpu"]["pattern"] == QUANTITY_REGEX
    assert trial["env"]["items"]["properties"]["name"]["pattern"] == "^[A-Za-z_][A-Za-z0-9_]*$"
    rules = [r["rule"] for r in schema["properties"]["spec"]["x-kubernetes-validations"]]
    assert any("claimName" in rule for rule in rules)
