# Coffer sandbox-mode policy: the default when the sandbox is not confidential.
#
# Contract (see the coffer-policies crate docs): input schema version 1, one decision per request in
# data.coffer.policy.decision = {"allow": bool, "reason": string}.
#
# Permissive for the agent API, but CreateContainer (and ExecProcess, for its process) is refused
# when it would give a container the guest's own resources:
#   - bind mounts of guest ("host", from the container's point of view) paths: type "bind" or a
#     "bind"/"rbind" option, whatever the declared type, since MS_BIND ignores the filesystem type,
#   - joining an existing namespace (a namespace entry with a path),
#   - the guest's devices: a device cgroup rule allowing type `a` (the runtime reads it as every
#     device, whatever its numbers and access),
#   - writable kernel interfaces: sysfs and cgroup mounted without `ro`/`rro`, or with `rw`/`rrw`
#     (the runtime applies options in order, so `ro` then `rw` mounts it writable),
#   - an exemption from the guest's OOM killer (oom_score_adj -1000),
#   - AppArmor or SELinux labels: the guest loads no such policy, so a label names nothing.
# OCI hooks (they run as guest root) and every other spec field the agent does not model never
# reach the policy: the agent refuses them when it decodes the request. Seccomp profiles,
# resource limits, supplementary groups and cgroup limits are applied as the host sends them:
# the host is trusted in sandbox mode, and they only restrict the container.
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

# The members each kind of request always has: the input schema's (policies/src/input.rs), less
# those it lets be absent. The agent's typed input carries them all; hand-written input
# (`Engine::decide_json`) may not, and a check that reads an absent member is undefined, so its
# denial would vanish and the request pass unchecked. A request missing one is denied.
required_members := {
	"CreateSandbox": {"sandbox_id", "hostname"},
	"UploadRootfs": {"container_id"},
	"PullImage": {"container_id", "image"},
	"CreateContainer": {"container_id", "rootfs", "process", "namespaces", "mounts", "devices", "hooks_present", "sysctls", "masked_paths", "readonly_paths"},
	"StartContainer": {"container_id"},
	"RemoveContainer": {"container_id", "force"},
	"StatsContainer": {"container_id"},
	"ExecProcess": {"container_id", "exec_id", "process"},
	"WaitProcess": {"container_id", "exec_id"},
	"SignalProcess": {"container_id", "exec_id", "signal", "all"},
	"WriteStdin": {"container_id", "exec_id"},
	"CloseStdin": {"container_id", "exec_id"},
	"ReadStdout": {"container_id", "exec_id"},
	"ReadStderr": {"container_id", "exec_id"},
	"TtyWinResize": {"container_id", "exec_id"},
}

# The same inside a request: its process (CreateContainer, ExecProcess) and root filesystem.
required_process_members := {"args", "env", "cwd", "user", "terminal", "capabilities", "no_new_privileges"}

missing_members := ({sprintf("request.%s", [m]) |
	some m in object.get(required_members, kind, set())
	not m in object.keys(input.request)
} | {sprintf("request.process.%s", [m]) |
	kind in {"CreateContainer", "ExecProcess"}
	some m in required_process_members
	not m in object.keys(object.get(input.request, "process", {}))
}) | {sprintf("request.rootfs.%s", [m]) |
	kind == "CreateContainer"
	some m in {"source", "image"}
	not m in object.keys(object.get(input.request, "rootfs", {}))
}

decision := {"allow": true, "reason": ""} if count(denials) == 0

decision := {"allow": false, "reason": concat("; ", sort(denials))} if count(denials) > 0

denials contains msg if {
	not input.version == 1
	msg := sprintf("unsupported policy input version %v, expected 1", [object.get(input, "version", null)])
}

denials contains msg if {
	some member in missing_members
	msg := sprintf("%s: the request has no %s (the input schema requires it)", [kind, member])
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

denials contains msg if {
	some rule in input.request.device_cgroup
	rule.allow == true
	rule.type == "a"
	msg := sprintf("%s: device cgroup rule of type a allows every device of the guest", [kind])
}

# sysfs and cgroup filesystems must be read-only.
read_only_types := {"sysfs", "cgroup", "cgroup2"}

denials contains msg if {
	some m in input.request.mounts
	m.type in read_only_types
	not read_only(m.options)
	msg := sprintf("%s: %s mount at %s is not read-only (ro or rro, and no rw or rrw)", [kind, m.type, m.destination])
}

read_only(options) if {
	count({o | some o in options; o in {"ro", "rro"}}) > 0
	count({o | some o in options; o in {"rw", "rrw"}}) == 0
}

denials contains msg if {
	input.request.process.oom_score_adj == -1000
	msg := sprintf("%s: oom_score_adj -1000 exempts the process from the guest's OOM killer", [kind])
}

denials contains msg if {
	some field in ["apparmor_profile", "selinux_label"]
	label := input.request.process[field]
	is_string(label)
	msg := sprintf("%s: %s %s names a policy the guest does not load", [kind, field, label])
}

denials contains msg if {
	label := input.request.mount_label
	is_string(label)
	msg := sprintf("%s: mount_label %s names a policy the guest does not load", [kind, label])
}

is_bind(m) if m.type == "bind"

is_bind(m) if {
	some option in m.options
	option in bind_options
}
