//! The committed generated code is exactly what the `.proto` files produce.
//! `WARDLINE_REGENERATE=1 cargo test -p wardline-proto --test generated`
//! rewrites it after a change to the `.proto` files.

use std::path::Path;

#[test]
fn generated_code_matches_the_proto_files() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::env::temp_dir().join(format!("wardline-proto-gen-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();
    tonic_prost_build::configure()
        .out_dir(&out)
        // Signed bytes are shared between every stream that sends them.
        .bytes(".wardline.v1.SignedSnapshot")
        .compile_protos(
            &[
                root.join("wardline/v1/management.proto"),
                root.join("wardline/v1/agent.proto"),
            ],
            &[root.to_path_buf()],
        )
        .expect(
            "protoc compiles the .proto files (is protobuf-compiler installed? cargo xtask setup)",
        );
    let fresh = std::fs::read_to_string(out.join("wardline.v1.rs")).unwrap();
    let committed_path = root.join("src/gen/wardline.v1.rs");
    std::fs::remove_dir_all(&out).unwrap();
    if std::env::var_os("WARDLINE_REGENERATE").is_some() {
        std::fs::write(&committed_path, &fresh).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&committed_path).unwrap_or_default();
    assert!(
        committed == fresh,
        "{} is stale: run WARDLINE_REGENERATE=1 cargo test -p wardline-proto --test generated",
        committed_path.display()
    );
}
