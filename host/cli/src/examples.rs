//! The `Examples:` section of each command's `--help`.

/// `coffer`.
pub const COFFER: &str = "\
Examples:
  coffer image build
  coffer sandbox run --rootfs ./rootfs -- /bin/echo hello
  coffer policy gen pod.yaml --kbs-url https://kbs.example:8080 --kbs-ca ca.pem -o initdata.toml
  coffer image pull registry.example/app:1.0 --dest ./app --authfile auth.json

Logging: COFFER_LOG (RUST_LOG when unset), e.g. COFFER_LOG=info; default warn.";

/// `coffer sandbox run`.
pub const SANDBOX_RUN: &str = "\
Examples:
  coffer sandbox run --rootfs ./rootfs -- /bin/sh -c 'echo hello'
  coffer sandbox run -i -e MODE=dev --rootfs ./rootfs -- /bin/sh
  coffer sandbox run --image 127.0.0.1:5000/app@sha256:… --registry-tunnel 127.0.0.1:5000 \\
      --initdata initdata.toml -- /app/server
  coffer sandbox run --tee snp --initdata initdata.toml --image registry.example/app@sha256:… -- /app/server";

/// `coffer sandbox gc`.
pub const SANDBOX_GC: &str = "\
Examples:
  coffer sandbox gc
  coffer sandbox gc --state-dir /tmp/coffer-state";

/// `coffer image build`.
pub const IMAGE_BUILD: &str = "\
Examples:
  coffer image build
  coffer image build --out /tmp/guest --json";

/// `coffer image pull`.
pub const IMAGE_PULL: &str = "\
Examples:
  coffer image pull registry.example/app:1.0 --dest ./app
  coffer image pull docker://127.0.0.1:5000/app:1.0 --insecure-registry 127.0.0.1:5000 --dest ./app
  REGISTRY_AUTH_FILE=auth.json coffer image pull registry.example/private:1.0 --dest ./app
  coffer image pull registry.example/secret:1.0 --dest ./app --kbs-url https://kbs.example:8080 \\
      --kbs-ca ca.pem --kbs-evidence snp";

/// `coffer image inspect`.
pub const IMAGE_INSPECT: &str = "\
Examples:
  coffer image inspect registry.example/app:1.0
  coffer image inspect docker://127.0.0.1:5000/app:1.0 --insecure-registry 127.0.0.1:5000 --authfile auth.json";

/// `coffer image encrypt`.
pub const IMAGE_ENCRYPT: &str = "\
Examples:
  coffer image encrypt --layout ./oci --tag 1.0 --out ./oci-enc --recipient pub.pem
  coffer image encrypt --from registry.example/app:1.0 --to registry.example/app:1.0-enc \\
      --kek kbs:///default/key/1=kek.bin --authfile auth.json";

/// `coffer image sign`.
pub const IMAGE_SIGN: &str = "\
Examples:
  coffer image sign registry.example/app:1.0 --key cosign.pem --public-key-out cosign.pub";

/// `coffer policy eval`.
pub const POLICY_EVAL: &str = "\
Examples:
  coffer policy eval --initdata initdata.toml --request CreateContainer --input create.json
  coffer policy eval --kata --policy rules.rego --data data.json --request ExecProcess --input exec.json";

/// `coffer policy gen`.
pub const POLICY_GEN: &str = "\
Examples:
  coffer policy gen pod.yaml -o initdata.toml
  coffer policy gen pod.yaml --insecure-registry 127.0.0.1:5000 --authfile auth.json \\
      --kbs-url https://kbs.example:8080 --kbs-ca ca.pem -o initdata.toml
  coffer policy gen pod.yaml --algorithm sha384 --annotation    # for TDX, as a pod annotation";

/// `coffer attestation verify`.
pub const ATTESTATION_VERIFY: &str = "\
Examples:
  coffer attestation verify --tee snp --evidence report.bin --vcek vcek.der
  coffer attestation verify --tee tdx --evidence quote.bin --collateral collateral.json";

/// `coffer attestation testing-ca`.
pub const ATTESTATION_TESTING_CA: &str = "\
Examples:
  coffer attestation testing-ca --out ./test-chain";

/// `coffer attestation forge`.
pub const ATTESTATION_FORGE: &str = "\
Examples:
  coffer attestation forge --tee snp --testing-ca ./test-chain --out ./evidence --debug";

/// `coffer kbs get-resource`.
pub const KBS_GET_RESOURCE: &str = "\
Examples:
  coffer kbs get-resource --kbs-url https://kbs.example:8080 --kbs-ca ca.pem --path default/key/1
  coffer kbs get-resource --kbs-url http://127.0.0.1:8080 --kbs-evidence sample --path default/key/1";

/// `coffer kbs check`.
pub const KBS_CHECK: &str = "\
Examples:
  coffer kbs check --kbs-url https://kbs.example:8080 --kbs-ca ca.pem --allow-sample
  coffer kbs check --kbs-url http://127.0.0.1:8080 --resource default/key/1 --json";

/// `coffer kbs load`.
pub const KBS_LOAD: &str = "\
Examples:
  coffer kbs load --kbs-url http://127.0.0.1:8080 -c 64 -n 10000
  coffer kbs load --kbs-url https://127.0.0.1:8080 --kbs-ca ca.pem -c 16 --duration 60 --server-pid 1234";

/// `coffer measure snp`.
pub const MEASURE_SNP: &str = "\
Examples:
  coffer measure snp --ovmf OVMF.amdsev.fd --kernel vmlinuz --initrd initramfs --append 'console=ttyS0' \\
      --vcpus 1 --vcpu-type EPYC-v4";

/// `coffer measure tdx`.
pub const MEASURE_TDX: &str = "\
Examples:
  coffer measure tdx --tdvf OVMF.inteltdx.fd";

/// `coffer measure guest`.
pub const MEASURE_GUEST: &str = "\
Examples:
  coffer measure guest
  coffer measure guest --config /etc/coffer/runtime-snp.toml";

/// `coffer sandbox`.
pub const SANDBOX: &str = "\
Examples:
  coffer sandbox run --rootfs ./rootfs -- /bin/echo hello
  coffer sandbox gc";

/// `coffer image`.
pub const IMAGE: &str = "\
Examples:
  coffer image build
  coffer image pull registry.example/app:1.0 --dest ./app --authfile auth.json
  coffer image inspect docker://registry.example/app:1.0";

/// `coffer attestation`.
pub const ATTESTATION: &str = "\
Examples:
  coffer attestation verify --tee snp --evidence report.bin --vcek vcek.der";

/// `coffer policy`.
pub const POLICY: &str = "\
Examples:
  coffer policy gen pod.yaml -o initdata.toml
  coffer policy eval --initdata initdata.toml --request CreateContainer --input create.json";

/// `coffer kbs`.
pub const KBS: &str = "\
Examples:
  coffer kbs get-resource --kbs-url https://kbs.example:8080 --kbs-ca ca.pem --path default/key/1";

/// `coffer measure`.
pub const MEASURE: &str = "\
Examples:
  coffer measure guest";
