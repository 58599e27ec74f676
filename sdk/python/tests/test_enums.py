"""The SDK's enums against the committed OpenAPI document: no server needed."""

import json
from pathlib import Path

import gpucloud
from gpucloud.enums import WireEnum

OPENAPI = Path(__file__).resolve().parents[3] / "openapi.json"


def test_every_wire_enum_matches_the_openapi_document():
    schemas = json.loads(OPENAPI.read_text())["components"]["schemas"]
    in_document = {name for name, s in schemas.items() if s.get("type") == "string" and "enum" in s}
    in_sdk = {cls.__name__: cls for cls in WireEnum.__subclasses__()}
    assert set(in_sdk) == in_document
    for name, cls in in_sdk.items():
        assert [m.value for m in cls] == schemas[name]["enum"], name


def test_members_are_their_text_and_unknown_text_is_kept():
    assert gpucloud.InstanceState.RUNNING == "running"
    assert str(gpucloud.Tier.ON_DEMAND) == "on-demand"
    assert json.dumps({"tier": gpucloud.Tier.SPOT}) == '{"tier": "spot"}'
    assert gpucloud.InstanceState.parse("running") is gpucloud.InstanceState.RUNNING
    assert gpucloud.InstanceState.parse("hibernating") == "hibernating"
