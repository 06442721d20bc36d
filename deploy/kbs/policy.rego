# coffer-kbs default resource policy.
#
# input: the attestation token claims (EAR-shaped); data: {plugin, resource-path, query}, where
# plugin is "resource" (resource-path: repo/type/tag) or "identity" (resource-path: the SPIFFE ID
# about to be issued).
# Releases a resource, or issues an identity, only to evidence whose appraisal is "affirming"
# (hardware-verified and pinned by reference values) and that is not development-only sample
# evidence.
package policy

import rego.v1

default allow := false

allow if {
	data.plugin in {"resource", "identity"}
	cpu := input.submods.cpu0
	cpu["ear.status"] == "affirming"
	evidence := cpu["ear.veraison.annotated-evidence"]
	evidence.tee != "sample"
	not evidence.sample
}
