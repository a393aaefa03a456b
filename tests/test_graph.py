"""Prompt validation: every ComfyUI error type, field by field, and the coercion rules."""
import pytest

from comfy_core.errors import PromptError
from comfy_core.graph import decode_prompt, types_match, validate
from comfy_core.nodes.registry import NodeRegistry
from engine_test_nodes import ANY, NODES


@pytest.fixture
def registry():
    reg = NodeRegistry()
    reg.register(NODES)
    return reg


def show(src, slot=0, node_id="9"):
    return {node_id: {"class_type": "Show", "inputs": {"value": [src, slot]}}}


def errors_of(exc_info, node_id):
    return exc_info.value.body["node_errors"][node_id]["errors"]


def test_valid_prompt_coerces_and_writes_back(registry):
    prompt = {"1": {"class_type": "Add", "inputs": {"a": "7", "b": 7.9}}, **show("1")}
    valid = validate(prompt, registry)
    assert valid.outputs == ["9"] and valid.node_errors == {}
    assert valid.prompt["1"]["inputs"] == {"a": 7, "b": 7.9}  # b is "INT,FLOAT": not a widget type, kept as is
    assert prompt["1"]["inputs"]["a"] == "7"  # the caller's dict is not mutated


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b'{"1": 5}', b'{"1": {"class_type": "Add", "inputs": 3}}'])
def test_malformed_prompts_are_invalid_prompt(raw):
    with pytest.raises(PromptError) as exc:
        decode_prompt(raw)
    assert exc.value.body["error"]["type"] == "invalid_prompt"
    assert exc.value.body["node_errors"] == {}


def test_missing_class_type_and_unknown_class(registry):
    with pytest.raises(PromptError) as exc:
        validate({"5": {"inputs": {}}}, registry)
    assert exc.value.body == {"error": {
        "type": "invalid_prompt", "message": "Cannot execute because a node is missing the class_type property.",
        "details": "Node ID '#5'", "extra_info": {}}, "node_errors": {}}
    with pytest.raises(PromptError) as exc:
        validate({"1": {"class_type": "Nope", "inputs": {}}, **show("1")}, registry)
    assert exc.value.error["message"] == "Cannot execute because node Nope does not exist."
    assert exc.value.error["details"] == "Node ID '#1'"


def test_unknown_class_rejected_even_when_dangling(registry):
    prompt = {"1": {"class_type": "Number", "inputs": {"value": 1}}, **show("1"),
              "2": {"class_type": "Missing", "inputs": {}}}
    with pytest.raises(PromptError) as exc:
        validate(prompt, registry)
    assert exc.value.error["type"] == "invalid_prompt"


def test_dangling_node_with_bad_inputs_is_ignored(registry):
    prompt = {"1": {"class_type": "Number", "inputs": {"value": 1}}, **show("1"),
              "2": {"class_type": "Add", "inputs": {}}}
    assert validate(prompt, registry).outputs == ["9"]


def test_no_outputs(registry):
    with pytest.raises(PromptError) as exc:
        validate({"1": {"class_type": "Number", "inputs": {"value": 1}}}, registry)
    assert exc.value.body == {"error": {"type": "prompt_no_outputs", "message": "Prompt has no outputs",
                                        "details": "", "extra_info": {}}, "node_errors": {}}


def test_partial_execution_targets(registry):
    prompt = {"1": {"class_type": "Number", "inputs": {"value": 1}}, **show("1", node_id="8"), **show("1")}
    assert validate(prompt, registry, ["8", "1"]).outputs == ["8"]
    with pytest.raises(PromptError) as exc:
        validate(prompt, registry, [])
    assert exc.value.error["type"] == "prompt_no_outputs"


def test_required_input_missing(registry):
    with pytest.raises(PromptError) as exc:
        validate({"1": {"class_type": "Add", "inputs": {"a": 1}}, **show("1")}, registry)
    body = exc.value.body
    assert body["error"] == {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
                             "details": "", "extra_info": {}}
    assert body["node_errors"] == {"1": {"errors": [{
        "type": "required_input_missing", "message": "Required input is missing", "details": "b",
        "extra_info": {"input_name": "b"}}], "dependent_outputs": ["9"], "class_type": "Add"}}


def test_output_node_own_errors_go_into_details(registry):
    with pytest.raises(PromptError) as exc:
        validate({"9": {"class_type": "Show", "inputs": {}}}, registry)
    assert exc.value.error["details"] == "Required input is missing: value"


@pytest.mark.parametrize("value, etype, message", [
    (-5, "value_smaller_than_min", "Value -5 smaller than min of 0"),
    (101, "value_bigger_than_max", "Value 101 bigger than max of 100"),
])
def test_range_errors(registry, value, etype, message):
    with pytest.raises(PromptError) as exc:
        validate({"1": {"class_type": "Add", "inputs": {"a": value, "b": 1}}, **show("1")}, registry)
    (error,) = errors_of(exc, "1")
    assert error == {"type": etype, "message": message, "details": "a", "extra_info": {
        "input_name": "a", "input_config": ["INT", {"default": 0, "min": 0, "max": 100}], "received_value": value}}


@pytest.mark.parametrize("raw, expected", [(7.9, 7), ("7", 7), (True, 1), ({"__value__": 5}, 5)])
def test_int_coercion(registry, raw, expected):
    valid = validate({"1": {"class_type": "Add", "inputs": {"a": raw, "b": 1}}, **show("1")}, registry)
    assert valid.prompt["1"]["inputs"]["a"] == expected


def test_invalid_input_type(registry):
    with pytest.raises(PromptError) as exc:
        validate({"1": {"class_type": "Add", "inputs": {"a": "7.5", "b": 1}}, **show("1")}, registry)
    (error,) = errors_of(exc, "1")
    assert error["type"] == "invalid_input_type"
    assert error["message"] == "Failed to convert an input value to a INT value"
    assert error["details"] == "a, 7.5, invalid literal for int() with base 10: '7.5'"
    assert error["extra_info"]["received_value"] == "7.5"
    assert error["extra_info"]["exception_message"] == "invalid literal for int() with base 10: '7.5'"


def test_value_not_in_list_short_and_long(registry):
    prompt = {"1": {"class_type": "Choose", "inputs": {"mode": "medium", "many": "zzz"}},
              "9": {"class_type": "ShowText", "inputs": {"text": ["1", 0]}}}
    with pytest.raises(PromptError) as exc:
        validate(prompt, registry)
    errors = {e["details"].split(":")[0]: e for e in errors_of(exc, "1")}
    assert errors["mode"]["details"] == "mode: 'medium' not in ['fast', 'slow']"
    assert errors["mode"]["extra_info"]["input_config"] == [["fast", "slow"]]
    assert errors["many"]["details"] == "many: 'zzz' not in (list of length 25)"
    assert errors["many"]["extra_info"]["input_config"] is None


def test_return_type_mismatch_and_comma_sets(registry):
    prompt = {"1": {"class_type": "Choose", "inputs": {"mode": "fast", "many": "o1"}}, **show("1")}
    with pytest.raises(PromptError) as exc:
        validate(prompt, registry)
    (error,) = errors_of(exc, "9")
    assert error == {"type": "return_type_mismatch", "message": "Return type mismatch between linked nodes",
                     "details": "value, received_type(STRING) mismatch input_type(INT)",
                     "extra_info": {"input_name": "value", "input_config": ["INT"], "received_type": "STRING",
                                    "linked_node": ["1", 0]}}
    assert types_match("INT", "INT,FLOAT") and types_match("FLOAT,INT", "INT")
    assert not types_match("*", "INT")  # a plain "*" string is not a wildcard
    assert types_match(ANY, "INT") and types_match("IMAGE", ANY)
    assert types_match(["a", "b"], "COMBO") and types_match(["a"], ["a"])  # list-typed outputs feed combos
    assert not types_match(["a", "b"], "STRING") and not types_match(["a"], ["b"])


def test_any_type_input_accepts_every_link(registry):
    prompt = {"1": {"class_type": "Choose", "inputs": {"mode": "fast", "many": "o1"}},
              "9": {"class_type": "Anything", "inputs": {"thing": ["1", 0]}}}
    assert validate(prompt, registry).outputs == ["9"]


def test_bad_links(registry):
    for link, details in [(["1"], "value"), (["404", 0], "value: node '404' is not in the prompt"),
                          (["1", 3], "value: node '1' (Number) has no output 3")]:
        prompt = {"1": {"class_type": "Number", "inputs": {"value": 1}}, "9": {"class_type": "Show",
                                                                             "inputs": {"value": link}}}
        with pytest.raises(PromptError) as exc:
            validate(prompt, registry)
        (error,) = errors_of(exc, "9")
        assert error["type"] == "bad_linked_input" and error["details"] == details


def test_upstream_failure_only_reported_on_the_failing_node(registry):
    prompt = {"1": {"class_type": "Add", "inputs": {"a": 500, "b": 1}},
              "2": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": 1}}, **show("2")}
    with pytest.raises(PromptError) as exc:
        validate(prompt, registry)
    assert list(exc.value.node_errors) == ["1"]
    assert exc.value.node_errors["1"]["dependent_outputs"] == ["9"]


def test_some_outputs_fail_others_run(registry):
    prompt = {"1": {"class_type": "Number", "inputs": {"value": 1}}, "2": {"class_type": "Add", "inputs": {"a": 1}},
              **show("1", node_id="8"), **show("2")}
    valid = validate(prompt, registry)
    assert valid.outputs == ["8"]
    assert valid.node_errors["2"]["dependent_outputs"] == ["9"]


def test_cycle_is_named(registry):
    prompt = {"1": {"class_type": "Add", "inputs": {"a": ["2", 0], "b": 1}},
              "2": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": 1}}, **show("1")}
    with pytest.raises(PromptError) as exc:
        validate(prompt, registry)
    assert {"1", "2"} <= set(exc.value.node_errors)
    error = exc.value.node_errors["1"]["errors"][0]
    assert error["type"] == "dependency_cycle" and "1" in error["extra_info"]["cycle"]


def test_validate_inputs_skips_builtin_checks_and_reports(registry):
    ok = {"1": {"class_type": "Even", "inputs": {"value": 12}}, **show("1")}  # 12 > max 10 but VALIDATE_INPUTS owns it
    assert validate(ok, registry).outputs == ["9"]
    with pytest.raises(PromptError) as exc:
        validate({"1": {"class_type": "Even", "inputs": {"value": 3}}, **show("1")}, registry)
    assert errors_of(exc, "1") == [{"type": "custom_validation_failed", "message": "Custom validation failed for node",
                                    "details": "value - 3 is odd", "extra_info": {"input_name": "value"}}]


def test_exception_during_validation(registry):
    with pytest.raises(PromptError) as exc:
        validate({"9": {"class_type": "Explodes", "inputs": {"value": 1}}}, registry)
    (error,) = errors_of(exc, "9")
    assert error["type"] == "exception_during_validation"
    assert error["message"] == "Exception when validating node" and error["details"] == "validator exploded"
    assert error["extra_info"]["exception_type"] == "RuntimeError" and error["extra_info"]["traceback"]


def test_exception_during_inner_validation_recorded_on_upstream(registry):
    prompt = {"1": {"class_type": "Explodes", "inputs": {"value": 1}}, "9": {"class_type": "Anything",
                                                                            "inputs": {"thing": ["1", 0]}}}
    prompt["1"]["class_type"] = "Explodes"
    with pytest.raises(PromptError) as exc:
        validate({k: v for k, v in prompt.items()}, registry, ["9"])
    (error,) = errors_of(exc, "1")
    assert error["type"] == "exception_during_inner_validation"
    assert error["extra_info"]["linked_node"] == ["1", 0]


@pytest.mark.parametrize("class_type", [["Add"], {"name": "Add"}, 5, None, 1.5])
def test_non_string_class_type_is_invalid_prompt(registry, class_type):
    # a list or dict used to reach `in registry` and raise TypeError (unhashable): a 500 over HTTP
    with pytest.raises(PromptError) as exc:
        validate({"1": {"class_type": class_type, "inputs": {}}, **show("1")}, registry)
    assert exc.value.body["error"] == {"type": "invalid_prompt",
                                       "message": f"Cannot execute because node {class_type} does not exist.",
                                       "details": "Node ID '#1'", "extra_info": {}}
    assert exc.value.body["node_errors"] == {}


# --- deep graphs: the depth first walk runs on an explicit stack (found by tests/test_asgi_fuzz.py) -------------

def add_chain(depth: int, head: dict) -> dict:
    """head -> Add x depth -> Show "out": `depth` links deep, far past Python's recursion limit for 5000."""
    prompt = {"0": head}
    for i in range(1, depth + 1):
        prompt[str(i)] = {"class_type": "Add", "inputs": {"a": [str(i - 1), 0], "b": 1}}
    return {**show(str(depth), node_id="out"), **prompt}


def test_5000_deep_chain_validates(registry):
    valid = validate(add_chain(5000, {"class_type": "Number", "inputs": {"value": 1}}), registry)
    assert valid.outputs == ["out"] and valid.node_errors == {}
    assert valid.prompt["4999"]["inputs"] == {"a": ["4998", 0], "b": 1}


def test_deep_chain_reports_the_error_at_its_far_end(registry):
    with pytest.raises(PromptError) as exc:
        validate(add_chain(5000, {"class_type": "Number", "inputs": {"value": 5000}}), registry)  # max is 1000
    assert list(exc.value.node_errors) == ["0"]
    assert errors_of(exc, "0")[0]["type"] == "value_bigger_than_max"
    assert exc.value.node_errors["0"]["dependent_outputs"] == ["out"]


def test_inner_exception_deep_down_is_reported_on_the_node_that_raised(registry):
    with pytest.raises(PromptError) as exc:
        validate(add_chain(3000, {"class_type": "Explodes", "inputs": {"value": 1}}), registry)
    (error,) = errors_of(exc, "0")
    assert error["type"] == "exception_during_inner_validation" and error["details"] == "validator exploded"
    assert error["extra_info"]["input_name"] == "a" and error["extra_info"]["linked_node"] == ["0", 0]
    assert error["extra_info"]["exception_type"] == "RuntimeError"


def test_3000_node_ring_is_a_named_cycle(registry):
    ring = {str(i): {"class_type": "Add", "inputs": {"a": [str((i + 1) % 3000), 0], "b": 1}} for i in range(3000)}
    with pytest.raises(PromptError) as exc:
        validate({**show("0", node_id="out"), **ring}, registry)
    assert set(exc.value.node_errors) == set(ring)
    (error,) = errors_of(exc, "1500")
    cycle = error["extra_info"]["cycle"]
    assert error["type"] == "dependency_cycle" and len(cycle) == 3001 and cycle[0] == cycle[-1] == "0"
    assert cycle[1:4] == ["1", "2", "3"]
