//! `coffer measure` end to end: the real `coffer` binary against the reference calculator
//! `sev-snp-measure` (PyPI, run in one Python process over the whole matrix) on real firmware —
//! Debian 12's and Debian 13's `OVMF.fd` × vCPUs 1, 2, 4, 64 × three vCPU models × qemu/ec2/gce ×
//! guest features 0x1/0x21 — and on test firmware carrying an `SNP_KERNEL_HASHES` section, with
//! the guest kernel, an initrd and a command line. Any mismatch fails. Then the reference values
//! `--emit-reference-values` writes are loaded by a real `coffer-kbs`: at start from its config
//! and through `POST /kbs/v0/reference-values`.
//!
//! Needs `tests/setup-measure.sh` (Debian 12 `ovmf`, Debian 13's `OVMF.fd`, `sev-snp-measure` in a
//! venv) and a guest kernel in /boot; a missing one is a failure, never a skip.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use coffer_tests::{bin, coffer};
use serde_json::{Value, json};

const DEBIAN12_OVMF: &str = "/usr/share/ovmf/OVMF.fd";
const VCPUS: [u32; 4] = [1, 2, 4, 64];
const VCPU_TYPES: [&str; 3] = ["EPYC-v4", "EPYC-Milan", "EPYC-Genoa"];
const VMMS: [&str; 3] = ["qemu", "ec2", "gce"];
const FEATURES: [u64; 2] = [0x1, 0x21];

fn venv() -> PathBuf {
    std::env::var_os("COFFER_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/coffer/venv"))
}

fn debian13_ovmf() -> PathBuf {
    std::env::var_os("COFFER_OVMF_TRIXIE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/coffer/ovmf-trixie"))
        .join("OVMF.fd")
}

fn require(path: &Path) -> PathBuf {
    assert!(
        path.exists(),
        "{} is missing: run tests/setup-measure.sh",
        path.display()
    );
    path.to_path_buf()
}

/// The newest guest kernel in /boot.
fn guest_kernel() -> PathBuf {
    let mut kernels: Vec<PathBuf> = std::fs::read_dir("/boot")
        .expect("/boot")
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .collect();
    kernels.sort();
    kernels
        .pop()
        .expect("no /boot/vmlinuz-*: run tests/setup.sh (installs linux-image-amd64)")
}

/// One launch configuration.
#[derive(Debug, Clone)]
struct Case {
    ovmf: PathBuf,
    vcpus: u32,
    vcpu_type: &'static str,
    vmm: &'static str,
    features: u64,
    kernel: Option<PathBuf>,
    initrd: Option<PathBuf>,
    append: Option<String>,
}

impl Case {
    fn new(
        ovmf: &Path,
        vcpus: u32,
        vcpu_type: &'static str,
        vmm: &'static str,
        features: u64,
    ) -> Self {
        Self {
            ovmf: ovmf.to_path_buf(),
            vcpus,
            vcpu_type,
            vmm,
            features,
            kernel: None,
            initrd: None,
            append: None,
        }
    }

    fn coffer_args(&self) -> Vec<String> {
        let mut args = vec![
            "measure".into(),
            "snp".into(),
            "--ovmf".into(),
            self.ovmf.display().to_string(),
            "--vcpus".into(),
            self.vcpus.to_string(),
            "--vcpu-type".into(),
            self.vcpu_type.into(),
            "--vmm-type".into(),
            self.vmm.into(),
            "--guest-features".into(),
            format!("{:#x}", self.features),
        ];
        for (flag, value) in [
            (
                "--kernel",
                self.kernel.as_ref().map(|p| p.display().to_string()),
            ),
            (
                "--initrd",
                self.initrd.as_ref().map(|p| p.display().to_string()),
            ),
            ("--append", self.append.clone()),
        ] {
            if let Some(v) = value {
                args.push(flag.into());
                args.push(v);
            }
        }
        args
    }

    fn reference_json(&self) -> Value {
        json!({
            "ovmf": self.ovmf,
            "vcpus": self.vcpus,
            "vcpu_type": self.vcpu_type,
            "vmm": if self.vmm == "qemu" { "QEMU" } else { self.vmm },
            "features": self.features,
            "kernel": self.kernel,
            "initrd": self.initrd,
            "append": self.append,
        })
    }
}

/// The reference digests (or the reference's error), one Python process for every case.
const REFERENCE_SCRIPT: &str = r#"
import json, sys
from sevsnpmeasure import guest, vcpu_types
from sevsnpmeasure.sev_mode import SevMode
from sevsnpmeasure.vmm_types import VMMType
out = []
for c in json.load(sys.stdin):
    try:
        digest = guest.calc_launch_digest(
            SevMode.SEV_SNP, c["vcpus"], vcpu_types.CPU_SIGS[c["vcpu_type"]], c["ovmf"],
            c["kernel"], c["initrd"], c["append"], c["features"], "", VMMType[c["vmm"]])
        out.append({"digest": digest.hex()})
    except Exception as e:
        out.append({"error": repr(e)})
json.dump(out, sys.stdout)
"#;

fn reference(cases: &[Case]) -> Vec<Result<String, String>> {
    let python = require(&venv().join("bin/python3"));
    let mut child = Command::new(python)
        .args(["-c", REFERENCE_SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the reference");
    let input: Vec<Value> = cases.iter().map(Case::reference_json).collect();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::to_string(&input).unwrap().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "sev-snp-measure failed (run tests/setup-measure.sh): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: Vec<Value> = serde_json::from_slice(&out.stdout).expect("reference output");
    assert_eq!(results.len(), cases.len());
    results
        .into_iter()
        .map(|r| match (r["digest"].as_str(), r["error"].as_str()) {
            (Some(d), _) => Ok(d.to_owned()),
            (None, Some(e)) => Err(e.to_owned()),
            _ => panic!("reference output {r}"),
        })
        .collect()
}

/// `coffer measure snp` for one case: the digest, or the error it printed.
fn ours(case: &Case) -> Result<String, String> {
    let out = Command::new(coffer())
        .args(case.coffer_args())
        .output()
        .expect("running coffer");
    if out.status.success() {
        let text = String::from_utf8(out.stdout).unwrap();
        let digest = text.strip_suffix('\n').expect("one line").to_owned();
        assert!(
            digest.len() == 96
                && digest
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
            "not 48 bytes of lowercase hex: {text:?}"
        );
        Ok(digest)
    } else {
        assert_eq!(out.status.code(), Some(125), "{case:?}");
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Runs every case through both and fails listing every disagreement.
fn compare(cases: &[Case]) {
    let expected = reference(cases);
    let mut mismatches = Vec::new();
    for (case, want) in cases.iter().zip(&expected) {
        let got = ours(case);
        let agree = match (&got, want) {
            (Ok(a), Ok(b)) => a == b,
            (Err(_), Err(_)) => true,
            _ => false,
        };
        if !agree {
            mismatches.push(format!(
                "{case:?}\n  coffer:          {got:?}\n  sev-snp-measure: {want:?}"
            ));
        }
    }
    let refused = expected.iter().filter(|r| r.is_err()).count();
    println!(
        "{} cases, {} digests equal, {} refused by both, {} mismatches",
        cases.len(),
        cases.len() - refused - mismatches.len(),
        refused,
        mismatches.len()
    );
    assert!(
        mismatches.is_empty(),
        "mismatches:\n{}",
        mismatches.join("\n")
    );
}

#[test]
fn snp_digest_equals_sev_snp_measure_on_debian_ovmf() {
    let firmwares = [require(Path::new(DEBIAN12_OVMF)), require(&debian13_ovmf())];
    let mut cases = Vec::new();
    for ovmf in &firmwares {
        for vcpus in VCPUS {
            for vcpu_type in VCPU_TYPES {
                for vmm in VMMS {
                    for features in FEATURES {
                        cases.push(Case::new(ovmf, vcpus, vcpu_type, vmm, features));
                    }
                }
            }
        }
    }
    assert_eq!(cases.len(), 144);
    // Every other QEMU EPYC model name both tools know, once.
    for vcpu_type in [
        "EPYC",
        "EPYC-v1",
        "EPYC-v2",
        "EPYC-v3",
        "EPYC-IBPB",
        "EPYC-Rome",
        "EPYC-Rome-v3",
        "EPYC-Milan-v2",
        "EPYC-Genoa-v1",
        "EPYC-Turin",
    ] {
        cases.push(Case::new(&firmwares[1], 3, vcpu_type, "qemu", 1));
    }
    // Debian's OVMF has no SNP_KERNEL_HASHES section: both must refuse --kernel.
    let mut refused = Case::new(&firmwares[0], 1, "EPYC", "qemu", 1);
    refused.kernel = Some(guest_kernel());
    cases.push(refused.clone());
    compare(&cases);
    let err = ours(&refused).unwrap_err();
    assert!(err.contains("SNP_KERNEL_HASHES"), "{err}");
}

/// A GUID's in-memory bytes (first three groups little-endian).
fn guid(text: &str) -> [u8; 16] {
    let hex: String = text.chars().filter(|c| *c != '-').collect();
    let mut b = [0u8; 16];
    for (i, byte) in b.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
    }
    b[0..4].reverse();
    b[4..6].reverse();
    b[6..8].reverse();
    b
}

/// Debian 12's OVMF image with its footer table replaced by one that declares the sections an
/// AMD-SEV build of OVMF declares for measured direct boot: SEC memory, secrets, CPUID,
/// SNP_KERNEL_HASHES and the hashes table address (at `table_offset` in that page).
fn kernel_hashes_firmware(dir: &Path, table_offset: u32) -> PathBuf {
    let mut image = std::fs::read(require(Path::new(DEBIAN12_OVMF))).unwrap();
    let len = image.len();
    // SEV metadata "ASEV" block in the last 8 KiB (its contents there are overwritten).
    let asev_at = len - 0x2000;
    let sections: [(u32, u32, u32); 6] = [
        (0x80_0000, 0x9000, 1),
        (0x80_9000, 0x2000, 1),
        (0x80_b000, 0x1000, 2),
        (0x80_c000, 0x1000, 3),
        (0x80_d000, 0x1000, 0x10),
        (0x80_e000, 0x2000, 1),
    ];
    let mut asev = b"ASEV".to_vec();
    asev.extend_from_slice(&(16 + 12 * sections.len() as u32).to_le_bytes());
    asev.extend_from_slice(&1u32.to_le_bytes());
    asev.extend_from_slice(&(sections.len() as u32).to_le_bytes());
    for (base, size, kind) in sections {
        for v in [base, size, kind] {
            asev.extend_from_slice(&v.to_le_bytes());
        }
    }
    image[asev_at..asev_at + asev.len()].copy_from_slice(&asev);

    let mut hash_table = (0x80_d000 + table_offset).to_le_bytes().to_vec();
    hash_table.extend_from_slice(&0x400u32.to_le_bytes());
    let entries: [(&str, Vec<u8>); 3] = [
        (
            "00f771de-1a7e-4fcb-890e-68c77e2fb44e",
            0xffff_b008u32.to_le_bytes().to_vec(),
        ),
        (
            "dc886566-984a-4798-a75e-5585a7bf67cc",
            ((len - asev_at) as u32).to_le_bytes().to_vec(),
        ),
        ("7255371f-3a3b-4b04-927b-1da6efa8d454", hash_table),
    ];
    // Entries sit below the footer, each as {data, u16 size, GUID}.
    let mut table = Vec::new();
    for (id, data) in entries.iter().rev() {
        table.extend_from_slice(data);
        table.extend_from_slice(&((data.len() + 18) as u16).to_le_bytes());
        table.extend_from_slice(&guid(id));
    }
    table.extend_from_slice(&((table.len() + 18) as u16).to_le_bytes());
    table.extend_from_slice(&guid("96b582de-1fb2-45f7-baea-a366c55a082d"));
    let end = len - 32;
    image[end - table.len()..end].copy_from_slice(&table);
    let path = dir.join(format!("ovmf-kernel-hashes-{table_offset:x}.fd"));
    std::fs::write(&path, image).unwrap();
    path
}

#[test]
fn snp_digest_equals_sev_snp_measure_with_kernel_hashes() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = guest_kernel();
    let initrd = dir.path().join("initrd.img");
    std::fs::write(
        &initrd,
        (0..20_000u32)
            .map(|i| (i * 7 % 251) as u8)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let append = "console=ttyS0 quiet panic=-1 rdinit=/init".to_owned();
    let mut cases = Vec::new();
    for table_offset in [0xc00, 0] {
        let ovmf = kernel_hashes_firmware(dir.path(), table_offset);
        let forms: [(bool, bool, bool); 5] = [
            (false, false, false),
            (true, false, false),
            (true, true, false),
            (true, false, true),
            (true, true, true),
        ];
        for (with_kernel, with_initrd, with_append) in forms {
            for vmm in VMMS {
                for (vcpus, vcpu_type, features) in
                    [(1, "EPYC-Milan", 0x1), (4, "EPYC-Genoa", 0x21)]
                {
                    let mut case = Case::new(&ovmf, vcpus, vcpu_type, vmm, features);
                    case.kernel = with_kernel.then(|| kernel.clone());
                    case.initrd = with_initrd.then(|| initrd.clone());
                    case.append = with_append.then(|| append.clone());
                    cases.push(case);
                }
            }
        }
    }
    compare(&cases);
    // The kernel, initrd and command line each change the digest.
    let digests: std::collections::BTreeSet<String> = cases[..30]
        .iter()
        .filter(|c| c.vmm == "qemu" && c.vcpus == 1)
        .map(|c| ours(c).unwrap())
        .collect();
    assert_eq!(digests.len(), 5);
}

/// The single `sev-snp-measure` command line agrees with the library calls used above.
#[test]
fn reference_cli_agrees_with_its_library() {
    let cli = require(&venv().join("bin/sev-snp-measure"));
    let ovmf = require(&debian13_ovmf());
    for (vcpus, vmm, vmm_cli) in [(2, "gce", "gce"), (64, "qemu", "QEMU")] {
        let case = Case::new(&ovmf, vcpus, "EPYC-Milan", vmm, 0x21);
        let out = Command::new(&cli)
            .args(["--mode", "snp", "--ovmf"])
            .arg(&ovmf)
            .args(["--vcpus", &vcpus.to_string(), "--vcpu-type", "EPYC-Milan"])
            .args(["--vmm-type", vmm_cli, "--guest-features", "0x21"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let cli_digest = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        assert_eq!(
            Ok(cli_digest.clone()),
            reference(std::slice::from_ref(&case))[0]
        );
        assert_eq!(Ok(cli_digest), ours(&case));
    }
}

/// A `coffer-kbs` on a free port with anonymous admin (tests only); killed on drop.
struct Kbs {
    child: std::process::Child,
    port: u16,
}

impl Kbs {
    fn start(dir: &Path, measurements: &[String]) -> Result<Self, String> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.join(format!("kbs-{port}.toml"));
        std::fs::create_dir_all(dir.join("resources")).unwrap();
        std::fs::write(
            &config,
            format!(
                "[http]\nlisten = \"127.0.0.1:{port}\"\ninsecure_http = true\n\n[admin]\ninsecure_allow_anonymous = true\n\n[resources]\ndir = {:?}\n\n[attestation.snp]\nmeasurements = {}\n",
                dir.join("resources").display().to_string(),
                serde_json::to_string(measurements).unwrap()
            ),
        )
        .unwrap();
        let mut child = Command::new(bin("coffer-kbs"))
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting coffer-kbs");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = child.try_wait().unwrap() {
                let mut err = String::new();
                child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut err)
                    .unwrap();
                return Err(format!("coffer-kbs exited {status}: {err}"));
            }
            assert!(Instant::now() < deadline, "coffer-kbs did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Self { child, port })
    }

    /// `POST path` with a JSON body; the HTTP status.
    fn post(&self, path: &str, body: &[u8]) -> u16 {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(
            s,
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .unwrap();
        s.write_all(body).unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        reply
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP reply: {reply:?}"))
    }
}

impl Drop for Kbs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn measure_emit(dir: &Path, file: &Path, vcpus: u32, append: bool) -> String {
    let case = Case::new(
        &require(Path::new(DEBIAN12_OVMF)),
        vcpus,
        "EPYC-Milan",
        "qemu",
        1,
    );
    let mut cmd = Command::new(coffer());
    cmd.current_dir(dir)
        .args(case.coffer_args())
        .arg("--emit-reference-values")
        .arg(file);
    if append {
        cmd.arg("--append-reference-values");
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn listed(file: &Path) -> Vec<String> {
    let doc: Value = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
    assert_eq!(doc.as_object().unwrap().len(), 1, "{doc}");
    serde_json::from_value(doc["snp_measurements"].clone()).unwrap()
}

#[test]
fn emitted_reference_values_are_loaded_by_coffer_kbs() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("reference-values.json");
    let two = measure_emit(dir.path(), &file, 2, false);
    assert_eq!(listed(&file), vec![two.clone()]);
    let four = measure_emit(dir.path(), &file, 4, true);
    assert_eq!(listed(&file), vec![two.clone(), four.clone()]);
    // Again: no duplicate. Without --append-reference-values: replaced.
    measure_emit(dir.path(), &file, 4, true);
    assert_eq!(listed(&file).len(), 2);
    let one = measure_emit(dir.path(), &dir.path().join("one.json"), 1, false);
    assert_eq!(listed(&dir.path().join("one.json")), vec![one]);

    // The broker's config takes the emitted list at start ...
    let kbs = Kbs::start(dir.path(), &listed(&file)).expect("coffer-kbs with emitted values");
    // ... and its admin API takes the emitted file as it is.
    assert_eq!(
        kbs.post("/kbs/v0/reference-values", &std::fs::read(&file).unwrap()),
        200
    );
    // A value that is not a launch digest is refused by both (the broker answers every refusal
    // with 401, as Trustee does; the admin is anonymous here, so this is the value's refusal).
    assert_eq!(
        kbs.post(
            "/kbs/v0/reference-values",
            br#"{"snp_measurements": ["00"]}"#
        ),
        401
    );
    drop(kbs);
    let broken = vec![two[..94].to_owned()];
    let err = Kbs::start(dir.path(), &broken).err().expect("refused");
    assert!(err.contains("measurements"), "{err}");
}

/// Issue #6 item 4: `coffer measure guest` gives the launch digest of the guest image we ship,
/// with the runtime configuration's firmware, CPU model and vCPUs and the exact command line the
/// runtime boots — equal to `sev-snp-measure` on those inputs.
#[test]
fn guest_digest_is_the_runtime_launch() {
    let dir = tempfile::tempdir().unwrap();
    let image = coffer_tests::guest_image();
    let image_dir = image.vmlinux.parent().unwrap().to_owned();
    let ovmf = kernel_hashes_firmware(dir.path(), 0xc00);
    let config = dir.path().join("runtime.toml");
    std::fs::write(
        &config,
        format!(
            "[guest]\nimage_dir = \"{}\"\nvcpus = 2\n[snp]\nfirmware = \"{}\"\ncpu_model = \"EPYC-Milan\"\n",
            image_dir.display(),
            ovmf.display()
        ),
    )
    .unwrap();
    let out = Command::new(coffer_tests::coffer())
        .args(["measure", "guest", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "coffer measure guest: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ours = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let mut case = Case::new(&ovmf, 2, "EPYC-Milan", "qemu", 0x1);
    case.kernel = Some(image.vmlinuz.clone());
    case.initrd = Some(image.initramfs.clone());
    // What `coffer sandbox run --tee snp` puts on the (measured) command line.
    case.append = Some(coffer_runtime::hypervisor::qemu::kernel_cmdline(
        coffer_runtime::hypervisor::qemu::Machine::Q35,
        None,
        &[],
    ));
    let reference = reference(&[case]).pop().unwrap().expect("reference digest");
    assert_eq!(ours, reference);
}

/// TDX: the MRTD `coffer measure tdx --emit-reference-values` writes is taken by coffer-kbs's admin
/// API; a file with one bad value changes nothing (401).
#[test]
fn tdx_reference_values_are_loaded_by_coffer_kbs() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tdx.json");
    let out = Command::new(coffer_tests::coffer())
        .args([
            "measure",
            "tdx",
            "--tdvf",
            DEBIAN12_OVMF,
            "--emit-reference-values",
        ])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "coffer measure tdx: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mrtd = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let doc: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(doc["tdx_mr_td"], json!([mrtd]));
    let kbs = Kbs::start(dir.path(), &[]).expect("coffer-kbs");
    assert_eq!(
        kbs.post("/kbs/v0/reference-values", &std::fs::read(&file).unwrap()),
        200
    );
    let mixed = json!({"tdx_mr_td": [mrtd, "00"]}).to_string();
    assert_eq!(kbs.post("/kbs/v0/reference-values", mixed.as_bytes()), 401);
    assert_eq!(kbs.post("/kbs/v0/reference-values", b"{}"), 401);
}
