//! The install artefacts, checked with the tools their users' clusters use: the Helm chart
//! rendered by Helm's own engine for every documented option set and validated, with every
//! manifest under `manifests/`, against the Kubernetes schema; `manifests/install.yaml`
//! and the Argo CD health config equal to a fresh render; the chart's RBAC equal to
//! `operator-rules.yaml`; and the Argo CD health checks run by Lua 5.1 on status fixtures.
//! `.ci/setup` installs the tools (a Python virtual environment and `lua5.1`).

use std::{path::PathBuf, process::Command};

use serde::Deserialize;

fn repository_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The Python of the chart tools' virtual environment.
fn chart_python() -> PathBuf {
    if let Some(python) = std::env::var_os("PGBACKUP_CHART_PYTHON") {
        return python.into();
    }
    let venv = std::env::var_os("PGBACKUP_CHART_VENV").map_or_else(
        || {
            PathBuf::from(std::env::var_os("HOME").expect("HOME"))
                .join(".cache/pgbackup/chart-venv")
        },
        PathBuf::from,
    );
    venv.join("bin/python")
}

fn run(mut command: Command, what: &str) {
    let output = command
        .current_dir(repository_root())
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run it ({e}); run `bash .ci/setup` first"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{what} failed:\n{text}");
    println!("{text}");
}

#[test]
fn the_chart_renders_validates_and_matches_the_static_manifests() {
    let python = chart_python();
    assert!(
        python.exists(),
        "{} is missing: run `bash .ci/setup` (it installs helm-python-sdk and kubernetes-validate)",
        python.display()
    );
    let mut command = Command::new(python);
    command.arg("charts/tests/check_chart.py");
    run(command, "charts/tests/check_chart.py");
}

#[test]
fn the_argo_cd_health_checks_answer_their_fixtures() {
    let mut command = Command::new("lua5.1");
    command.arg("manifests/gitops/argocd/health/health_test.lua");
    run(
        command,
        "lua5.1 manifests/gitops/argocd/health/health_test.lua",
    );
}

/// The operator's arguments as `manifests/install.yaml` (the chart with defaults) gives
/// them parse with the real command line, into the settings the chart means.
#[test]
fn the_rendered_operator_arguments_parse() {
    use clap::Parser;
    use pgbackup::cli::{Cli, Command as Subcommand};
    let text = std::fs::read_to_string(repository_root().join("manifests/install.yaml"))
        .expect("install.yaml");
    let deployment = serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde_yaml::Value::deserialize(d).expect("YAML"))
        .find(|d| d["kind"] == "Deployment")
        .expect("the operator Deployment");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let mut argv = vec!["pgbackup".to_string()];
    argv.extend(
        container["args"]
            .as_sequence()
            .expect("args")
            .iter()
            .map(|a| a.as_str().expect("string arg").to_string()),
    );
    let cli = Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    let Subcommand::Operator(args) = cli.command else {
        panic!("the Deployment runs `pgbackup operator`");
    };
    assert_eq!(
        args.agent_image,
        concat!("pgbackup/agent:{major}-", env!("CARGO_PKG_VERSION")),
        "the chart's agent is the operator's own version"
    );
    assert_eq!(
        args.trigger_image,
        concat!("pgbackup/operator:", env!("CARGO_PKG_VERSION"))
    );
    assert!(!args.no_leader_election);
    let probes = [
        &container["livenessProbe"]["httpGet"]["path"],
        &container["readinessProbe"]["httpGet"]["path"],
    ];
    assert_eq!(
        probes.map(|p| p.as_str()),
        [Some("/healthz"), Some("/readyz")]
    );
    assert_eq!(
        args.listen.rsplit(':').next(),
        container["ports"][0]["containerPort"]
            .as_u64()
            .map(|p| p.to_string())
            .as_deref(),
        "the probes reach the port the operator listens on"
    );
}
