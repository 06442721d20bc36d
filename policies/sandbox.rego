# Coffer sandbox-mode policy: the default when the sandbox is not confidential.
#
# Contract (see the coffer-policies crate docs): input schema version 1, one decision per request in
# data.coffer.policy.decision = {"allow": bool, "reason": string}.
#
# Permissive for the agent API, but CreateContainer is refused when it would give a container the
# guest's own resources:
#   - OCI hooks (they run as guest root before the container exists),
#   - bind mounts of guest ("host", from the container's point of view) paths: type "bind" or a
#     "bind"/"rbind" option, whatever the declared type, since MS_BIND ignores the filesystem type,
#   - joining an existing namespace (a namespace entry with a path).
# Mounts of the standard kernel filesystems (proc, sysfs, cgroup, cgroup2, tmpfs for /dev and
# /dev/shm, devpts, mqueue) are not binds and pass; so do the pod's own files (type "pod": the
# agent binds the resolv.conf, hosts and hostname it wrote from CreateSandbox, read-only, never a
# guest path the request chooses), as do the agent's other typed mounts. CreateSandbox's network
# (the pod's NICs, routes and DNS, validated by the agent) is allowed as described. Unknown
# request kinds and input versions are denied. Every denial names the RPC and the offending field.
package coffer.policy

import rego.v1

# Every RPC of input schema version 1.
known_kinds := {
	"CreateSandbox",
	"DestroySandbox",
	"UploadRootfs",
	"PullImage",
	"CreateContainer",
	"StartContainer",
	"RemoveContainer",
	"StatsContainer",
	"ExecProcess",
	"WaitProcess",
	"SignalProcess",
	"WriteStdin",
	"CloseStdin",
	"ReadStdout",
	"ReadStderr",
	"TtyWinResize",
	"GetGuestDetails",
	"GetOOMEvent",
}

# Mount options that make a mount a bind mount regardless of its type.
bind_options := {"bind", "rbind"}

kind := object.get(input, ["request", "kind"], "<missing kind>")

decision := {"allow": true, "reason": ""} if count(denials) == 0

decision := {"allow": false, "reason": concat("; ", sort(denials))} if count(denials) > 0

denials contains msg if {
	not input.version == 1
	msg := sprintf("unsupported policy input version %v, expected 1", [object.get(input, "version", null)])
}

denials contains msg if {
	not kind in known_kinds
	msg := sprintf("%v is not an RPC this policy knows", [kind])
}

denials contains msg if {
	input.request.hooks_present != false
	msg := sprintf("%s: OCI hooks are present (they would run as guest root)", [kind])
}

denials contains msg if {
	some m in input.request.mounts
	is_bind(m)
	msg := sprintf("%s: mount %s → %s is a bind mount of a host path", [kind, m.source, m.destination])
}

denials contains msg if {
	some ns in input.request.namespaces
	is_string(ns.path)
	ns.path != ""
	msg := sprintf("%s: %s namespace joins the existing namespace %s (host namespace)", [kind, ns.type, ns.path])
}

is_bind(m) if m.type == "bind"

is_bind(m) if {
	some option in m.options
	option in bind_options
}
