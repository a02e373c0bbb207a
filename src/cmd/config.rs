//! `dcpp config` and `dcpp schema`.

use std::io::Write;
use std::path::PathBuf;

use crate::Global;

/// Output format of `dcpp config`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Yaml,
    Json,
}

/// Validate compose files and print the canonical model (exit 1 with every error on stderr).
#[derive(Debug, clap::Args)]
pub struct ConfigArgs {
    /// Compose file(s), merged in order. Default: compose.yaml, compose.yml,
    /// docker-compose.yaml or docker-compose.yml in the current directory.
    #[arg(short = 'f', long = "file")]
    pub files: Vec<PathBuf>,
    /// Project name (overrides `name:`, COMPOSE_PROJECT_NAME and the directory name).
    #[arg(short = 'p', long = "project-name")]
    pub project_name: Option<String>,
    /// Enable services of this profile (repeatable; also COMPOSE_PROFILES).
    #[arg(long = "profile")]
    pub profiles: Vec<String>,
    /// Read interpolation variables from this file instead of <project dir>/.env.
    #[arg(long = "env-file")]
    pub env_files: Vec<PathBuf>,
    /// Project directory (default: the directory of the first compose file).
    #[arg(long = "project-directory")]
    pub project_directory: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value = "yaml")]
    pub format: Format,
    /// Only validate; print nothing on success.
    #[arg(short, long)]
    pub quiet: bool,
}

/// Print the JSON Schema of the canonical model.
#[derive(Debug, clap::Args)]
pub struct SchemaArgs {}

pub fn run_config(_global: &Global, args: ConfigArgs) -> anyhow::Result<u8> {
    let opts = dcpp_spec::LoadOptions {
        files: args.files,
        project_name: args.project_name,
        profiles: args.profiles,
        env_files: args.env_files,
        working_dir: std::env::current_dir()?,
        project_dir: args.project_directory,
        environment: std::env::vars().collect(),
    };
    let mut stderr = std::io::stderr().lock();
    match dcpp_spec::load(&opts) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                writeln!(stderr, "warning: {w}")?;
            }
            if !args.quiet {
                let out = match args.format {
                    Format::Yaml => dcpp_spec::config_yaml(&loaded),
                    Format::Json => dcpp_spec::config_json(&loaded) + "\n",
                };
                write_stdout(out.as_bytes())?;
            }
            Ok(0)
        }
        Err(errs) => {
            for w in &errs.warnings {
                writeln!(stderr, "warning: {w}")?;
            }
            for e in &errs.errors {
                writeln!(stderr, "{e}")?;
            }
            Ok(1)
        }
    }
}

pub fn run_schema(_global: &Global, _args: SchemaArgs) -> anyhow::Result<u8> {
    let schema = serde_json::to_string_pretty(&dcpp_spec::schema())? + "\n";
    write_stdout(schema.as_bytes())?;
    Ok(0)
}

/// Writes to stdout; a closed pipe (`dcpp schema | head`) is not an error.
fn write_stdout(bytes: &[u8]) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}
