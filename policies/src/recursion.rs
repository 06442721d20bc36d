//! Load-time check that no Rego function calls itself, directly or through other functions.
//!
//! OPA rejects recursion at compile time. regorus 0.14 detects recursive *rules* while evaluating
//! (an evaluation error, hence a denial), but a recursive *function* recurses on the native stack
//! until the process aborts with a stack overflow, before the evaluation time limit can stop it
//! (POL-02). So the engine walks the policy's AST once at load and refuses any cycle in the
//! function call graph.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value as Json;

/// Prefix of fully qualified references to the policy's own rules and functions.
const OWN_PREFIX: &str = "data.coffer.policy.";

/// Returns a cycle `f → g → f` when some function of the AST (regorus's `get_ast_as_json` output)
/// can call itself, `None` otherwise.
pub(crate) fn find_function_cycle(ast: &Json) -> Option<String> {
    let graph = call_graph(ast);
    let mut done = BTreeSet::new();
    for start in graph.keys() {
        let mut path = Vec::new();
        if let Some(cycle) = visit(&graph, start, &mut path, &mut done) {
            return Some(cycle);
        }
    }
    None
}

/// Function name → the functions of this policy it calls.
fn call_graph(ast: &Json) -> BTreeMap<String, BTreeSet<String>> {
    let mut functions: BTreeMap<String, Vec<&Json>> = BTreeMap::new();
    let modules = ast.as_array().into_iter().flatten();
    for rule in modules.flat_map(|m| m["ast"]["rules"].as_array().into_iter().flatten()) {
        if let Some(name) = ref_name(&rule["Spec"]["head"]["Func"]["refr"]) {
            functions.entry(name).or_default().push(rule);
        }
    }
    functions
        .iter()
        .map(|(name, specs)| {
            let mut callees = BTreeSet::new();
            for spec in specs {
                collect_calls(spec, &mut callees);
            }
            callees.retain(|callee| functions.contains_key(callee));
            (name.clone(), callees)
        })
        .collect()
}

/// Depth-first search; `path` is the current call chain, `done` the functions proven acyclic.
fn visit(
    graph: &BTreeMap<String, BTreeSet<String>>,
    name: &str,
    path: &mut Vec<String>,
    done: &mut BTreeSet<String>,
) -> Option<String> {
    if done.contains(name) {
        return None;
    }
    if let Some(pos) = path.iter().position(|n| n == name) {
        let mut cycle = path[pos..].to_vec();
        cycle.push(name.to_owned());
        return Some(cycle.join(" → "));
    }
    path.push(name.to_owned());
    for callee in graph.get(name).into_iter().flatten() {
        if let Some(cycle) = visit(graph, callee, path, done) {
            return Some(cycle);
        }
    }
    path.pop();
    done.insert(name.to_owned());
    None
}

/// Every `Call` target anywhere below `node`, as a name relative to the policy's package.
fn collect_calls(node: &Json, out: &mut BTreeSet<String>) {
    match node {
        Json::Object(map) => {
            if let Some(name) = map.get("Call").and_then(|call| ref_name(&call["fcn"])) {
                out.insert(name);
            }
            for value in map.values() {
                collect_calls(value, out);
            }
        }
        Json::Array(items) => {
            for item in items {
                collect_calls(item, out);
            }
        }
        _ => {}
    }
}

/// `f`, `a.b` or `data.coffer.policy.f` (as `f`) from a `Var`/`RefDot` expression.
fn ref_name(expr: &Json) -> Option<String> {
    let name = if let Some(var) = expr.get("Var") {
        var["value"].as_str()?.to_owned()
    } else if let Some(dot) = expr.get("RefDot") {
        format!("{}.{}", ref_name(&dot["refr"])?, dot["field"][1].as_str()?)
    } else {
        return None;
    };
    Some(match name.strip_prefix(OWN_PREFIX) {
        Some(own) => own.to_owned(),
        None => name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cycle_of(policy: &str) -> Option<String> {
        let mut engine = regorus::Engine::new();
        engine.add_policy("p.rego".into(), policy.into()).unwrap();
        let ast: Json = serde_json::from_str(&engine.get_ast_as_json().unwrap()).unwrap();
        find_function_cycle(&ast)
    }

    /// POL-02: recursion through functions, in every spelling, is found.
    #[test]
    fn pol02_function_cycles_table() {
        let cases = [
            ("f(x) := y if { y := f(x) }", Some("f → f")),
            (
                "f(x) := y if { y := data.coffer.policy.f(x) }",
                Some("f → f"),
            ),
            (
                "f(x) := g(x)\ng(x) := [z | z := f(x)][0]",
                Some("f → g → f"),
            ),
            ("a.b(x) := a.b(x)", Some("a.b → a.b")),
            (
                "f(x) := 1 if x == 0\nf(x) := f(x - 1) if x > 0",
                Some("f → f"),
            ),
            ("f(x) := g(x) + 1\ng(x) := x * 2", None),
            ("f(x) := count(x)\nr := f([1])", None),
        ];
        for (body, expected) in cases {
            let policy = format!("package coffer.policy\n{body}\n");
            assert_eq!(cycle_of(&policy).as_deref(), expected, "{body}");
        }
    }
}
