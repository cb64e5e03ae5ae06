//! The shipped configs are valid as shipped: `idemgate check` accepts every sample route file in
//! `examples/routes/`, the demo's config and `config/idemgate.yaml`, with the secrets they name
//! set to dummy values. There is a sample for every preset, and each says where its secret
//! comes from.

use idemgate::preset::Preset;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Valid for every scheme: `whsec_` + base64 is what Standard Webhooks and Svix require, and
/// any other scheme takes the text as it is.
const DUMMY_SECRET: &str = "whsec_ZHVtbXktc2VjcmV0LWZvci1pZGVtZ2F0ZS1jaGVjaw==";

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn route_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo("examples/routes"))
        .expect("examples/routes/")
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml" || ext == "yml"))
        .collect();
    files.sort();
    files
}

/// The `NAME`s of every `env:NAME` in the file.
fn secret_vars(text: &str) -> Vec<String> {
    text.split("env:")
        .skip(1)
        .map(|rest| rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect::<String>())
        .filter(|name| !name.is_empty())
        .collect()
}

/// `idemgate check --config FILE` with `env`, and none of the caller's `IDEMGATE_*` or secrets.
fn check(file: &Path, env: &[(String, String)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_idemgate"));
    command.arg("check").arg("--config").arg(file).env_remove("RUST_LOG");
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("IDEMGATE_") {
            command.env_remove(name);
        }
    }
    for name in secret_vars(&std::fs::read_to_string(file).unwrap_or_default()) {
        command.env_remove(name);
    }
    command.envs(env.iter().map(|(k, v)| (k, v))).output().expect("run idemgate check")
}

fn assert_valid(file: &Path) -> String {
    let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let env: Vec<(String, String)> = secret_vars(&text).into_iter().map(|name| (name, DUMMY_SECRET.into())).collect();
    let output = check(file, &env);
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{}: check failed: {stderr}{stdout}", file.display());
    // A warning is a ttl shorter than the provider's retry window: a sample must not teach that.
    assert!(stderr.trim().is_empty(), "{}: {stderr}", file.display());
    assert!(stdout.contains("is valid") && stdout.contains("routes (first match wins):"), "{stdout}");
    stdout.into_owned()
}

#[test]
fn every_sample_route_file_passes_check() {
    let files = route_files();
    assert!(!files.is_empty());
    for file in &files {
        let stdout = assert_valid(file);
        assert!(stdout.contains("verify "), "{}: a sample verifies signatures: {stdout}", file.display());
    }
}

#[test]
fn the_shipped_config_and_the_demo_config_pass_check() {
    assert_valid(&repo("config/idemgate.yaml"));
    assert_valid(&repo("examples/demo/idemgate.yaml"));
}

#[test]
fn there_is_a_sample_for_every_preset_naming_its_secret_in_its_header() {
    for preset in Preset::ALL {
        let file = repo(&format!("examples/routes/{}.yaml", preset.name()));
        let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert!(text.contains(&format!("preset: {}", preset.name())), "{}", file.display());
        let header: String = text.lines().take_while(|l| l.starts_with('#') || *l == "---").collect();
        let vars = secret_vars(&text);
        assert!(!vars.is_empty(), "{}: no env: secret", file.display());
        for var in vars {
            assert!(header.contains(&var), "{}: the header does not say where {var} comes from", file.display());
        }
        assert!(text.lines().any(|l| l.trim_start().starts_with("ttl: ")), "{}: no ttl", file.display());
    }
}

#[test]
fn a_sample_without_its_secret_is_refused_naming_the_variable() {
    let output = check(&repo("examples/routes/github.yaml"), &[]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("GITHUB_WEBHOOK_SECRET is not set"), "{stderr}");
}
