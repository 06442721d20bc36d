"""The second engine of the differential test (POL-04): rego-cpp, through its Python binding
`regopy`, decides the corpus `differential.rs` wrote, and prints what it decided.

Usage: python differential.py CORPUS.json RESULTS.json

CORPUS.json: {"policies": {name: {"source": rego, "data": object or null}},
              "cases": [{"policy": name, "input": object}]}
RESULTS.json: {"engine": version, "rewrites": {name: {"some_key_value": n, "sort": n}},
               "results": [{"value": decision} | {"undefined": true} | {"error": message}]}

Two constructs of our policies rego-cpp 1.5 gets wrong are rewritten, and the rewrites counted:
- it refuses `some k, v in coll` in the body of a set or array comprehension ("Invalid
  collection": it reads the comma as an element separator); OPA and regorus accept it. Each
  `some k, v in ref` becomes `some k; v := ref[k]`, the same bindings for arrays, sets and
  objects;
- its `sort` of a set returns a set, where OPA's returns an array (see `sort_arrays`).
Nothing else in a policy is changed. The decision's strings are read base64-encoded (`DECISION`),
and regopy's own result parser is bypassed (`query`).

The engine is set up as coffer-policies sets up regorus: strict builtin errors, the policy data,
then the value of `data.coffer.policy.data_index` (evaluated once with an empty input) added as
`data.coffer_index`.
"""

import base64
import json
import re
import sys

import regopy
from regopy.rego_shared import rego_free_output, rego_output_ok, rego_output_string, rego_query

SOME_KEY_VALUE = re.compile(r"\bsome (\w+), (\w+) in ([A-Za-z_][\w.]*)")


def rewrite(source):
    """The policy as rego-cpp can take it, and how many constructs were rewritten."""
    source, iterations = SOME_KEY_VALUE.subn(
        lambda m: f"some {m[1]}; {m[2]} := {m[3]}[{m[1]}]", source)
    source, sorts = sort_arrays(source)
    return source, {"some_key_value": iterations, "sort": sorts}


def sort_arrays(source):
    """Every `sort(X)` as `sort([v | some v in X])`: rego-cpp 1.5's `sort` of a set returns a set
    (`is_array(sort({"a"}))` is false, `sort(s)[0]` undefined, `sprintf("%v")` renders braces),
    where OPA's returns an array. The comprehension hands it an array with the same members.
    Returns the rewritten source and the number of calls rewritten."""
    out = []
    count = 0
    i = 0
    while (j := source.find("sort(", i)) >= 0:
        if j > 0 and (source[j - 1].isalnum() or source[j - 1] in "_."):
            out.append(source[i:j + 5])  # another name ending in `sort`
            i = j + 5
            continue
        depth, k = 1, j + 5
        while depth:
            depth += {"(": 1, ")": -1}.get(source[k], 0)
            k += 1
        inner, nested = sort_arrays(source[j + 5:k - 1])
        count += 1 + nested
        out.append(f"{source[i:j]}sort([__sorted | some __sorted in {inner}])")
        i = k
    out.append(source[i:])
    return "".join(out), count


def query(rego, text):
    """Runs `text` (which binds `x`): ("value", x), ("undefined", None) or ("error", message).

    regopy's own `Output` parses rego-cpp's result text with a strict JSON parser, which fails on
    the raw control characters rego-cpp leaves in strings (a newline from the input in a denial
    reason); the text is read here with control characters allowed in strings.
    """
    impl = rego_query(rego._impl, text)
    try:
        result = rego_output_string(impl)
        if not rego_output_ok(impl):
            return "error", result.strip().splitlines()[0] if result.strip() else "error"
        if result.strip() == "undefined":
            return "undefined", None
        output = json.loads(result, strict=False)
        if isinstance(output, list):
            if len(output) != 1:
                return "error", f"{len(output)} results"
            output = output[0]
        return "value", output["bindings"]["x"]
    finally:
        rego_free_output(impl)


def interpreter(policy):
    rego = regopy.Interpreter()
    rego.strict_built_in_errors = True
    source, count = rewrite(policy["source"])
    rego.add_module("policy.rego", source)
    if policy["data"] is not None:
        rego.add_data(policy["data"])
    rego.set_input({})
    outcome, index = query(rego, "x = data.coffer.policy.data_index")
    if outcome == "error":
        raise SystemExit(f"data_index: {index}")
    if outcome == "value":
        rego.add_data({"coffer_index": index})
    return rego, count


# The decision with every string base64-encoded by rego-cpp itself: its result text does not escape
# quotes or control characters, and ends a string at a NUL.
DECISION = (
    "x := [y | d := data.coffer.policy.decision; y := {"
    '"allow": d.allow, '
    '"reason": base64.encode(object.get(d, "reason", "")), '
    '"record": {base64.encode(k): base64.encode(v) | some k; v := object.get(d, "record", {})[k]}, '
    '"fields": [k | some k; _ := d[k]]}][0]'
)


def decide(rego, case_input):
    rego.set_input(case_input)
    outcome, result = query(rego, DECISION)
    if outcome == "undefined":
        return {"undefined": True}
    if outcome == "error":
        return {"error": result}
    return {"value": {
        "allow": result["allow"],
        "reason": base64.b64decode(result["reason"]).decode("utf-8"),
        "record": {base64.b64decode(k).decode("utf-8"): base64.b64decode(v).decode("utf-8")
                   for k, v in result["record"].items()},
        "fields": result["fields"],
    }}


def main():
    corpus_path, results_path = sys.argv[1], sys.argv[2]
    with open(corpus_path, encoding="utf-8") as f:
        corpus = json.load(f)
    engines = {}
    rewrites = {}
    for name, policy in corpus["policies"].items():
        engines[name], rewrites[name] = interpreter(policy)
    results = [decide(engines[case["policy"]], case["input"]) for case in corpus["cases"]]
    with open(results_path, "w", encoding="utf-8") as f:
        json.dump({"engine": regopy.rego_version(),
                   "rewrites": rewrites, "results": results}, f)


if __name__ == "__main__":
    main()
