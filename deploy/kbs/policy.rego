# coffer-kbs default resource policy.
#
# input: the attestation token claims (EAR-shaped); data: {plugin, resource-path, query}.
# Releases a resource only to evidence whose appraisal is "affirming" (hardware-verified and
# pinned by reference values) and that is not development-only sample evidence.
package policy

import rego.v1

default allow := false

allow if {
	data.plugin == "resource"
	cpu := input.submods.cpu0
	cpu["ear.status"] == "affirming"
	evidence := cpu["ear.veraison.annotated-evidence"]
	evidence.tee != "sample"
	not evidence.sample
}
