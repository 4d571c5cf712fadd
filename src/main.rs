use std::time::Duration;

use clap::Parser;
use realtime_gateway::app::auth::{Authenticator, User};
use realtime_gateway::model::config::{Cli, Command, LogFormat};

fn main() -> std::process::ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion) => {
            let _ = e.print();
            return std::process::ExitCode::SUCCESS;
        }
        Err(e) => {
            // One line naming the variable: clap's first line does (value names are the env names).
            let text = e.to_string();
            eprintln!("{}", text.lines().next().unwrap_or("error: invalid configuration"));
            return std::process::ExitCode::from(2);
        }
    };
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(Command::SelfSigned { out, host }) = &cli.command {
        let (cert, key) = realtime_gateway::front::tls::self_signed(out, host.clone())?;
        println!("{}\n{}", cert.display(), key.display());
        return Ok(());
    }
    if let Some(Command::Token { sub, role, ttl, email, name }) = cli.command {
        if cli.config.jwt_secret.as_deref().unwrap_or_default().is_empty() {
            anyhow::bail!("JWT_SECRET is not set: tokens minted with a random secret would be useless");
        }
        let auth = Authenticator::from_config(&cli.config)?;
        println!("{}", auth.mint(&User { user_id: sub, email, name, role }, ttl)?);
        return Ok(());
    }
    init_tracing(cli.config.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(serve(cli))
}

async fn serve(cli: Cli) -> anyhow::Result<()> {
    let gateway = realtime_gateway::startup(cli.config).await?;
    let state = gateway.state.clone();
    if state.auth.ephemeral {
        let day = Duration::from_secs(24 * 3600);
        let admin = User { user_id: "admin".into(), email: None, name: Some("Admin".into()), role: "admin".into() };
        let user = User { user_id: "alice".into(), email: None, name: Some("Alice".into()), role: "user".into() };
        tracing::warn!("JWT_SECRET is not set: using an EPHEMERAL random secret; tokens die with this process. Set JWT_SECRET in production.");
        tracing::warn!("admin token (24h): {}", state.auth.mint(&admin, day)?);
        tracing::warn!("user token (24h, alice): {}", state.auth.mint(&user, day)?);
    }
    tracing::info!(addr = %gateway.local_addr(), node_id = %state.node_id, "realtime-gateway listening");
    if let Some(tls_addr) = gateway.tls_addr() {
        tracing::info!(tls_addr = %tls_addr, "TLS listening (HTTPS, wss)");
    }
    gateway.run(shutdown_signal()).await
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::new(log_directives(std::env::var("RUST_LOG").ok().as_deref()));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Pretty => builder.init(),
    }
}

/// The log filter: `RUST_LOG` (default `info`), with socketioxide and engineioxide held at `info`
/// unless `RUST_LOG` names them: at `debug` they log CONNECT `auth` payloads and event arguments,
/// tokens included, and tokens are never logged (docs/security.md).
///
/// The gateway's code lives in the crates of its layers (`rtg_model` ... `rtg_front`, whose module paths
/// are the log targets): a directive for `realtime_gateway` covers them all, and one for
/// `realtime_gateway::<layer>::<path>` names `rtg_<layer>::<path>`.
fn log_directives(rust_log: Option<&str>) -> String {
    let asked = rust_log.map(str::trim).filter(|s| !s.is_empty()).unwrap_or("info");
    let mut directives = asked.split(',').map(gateway_targets).collect::<Vec<_>>().join(",");
    for target in ["socketioxide", "engineioxide"] {
        if !asked.contains(target) {
            directives.push_str(&format!(",{target}=info"));
        }
    }
    directives
}

/// One directive, with `realtime_gateway` targets spelled as the layers' crates (see [`log_directives`]).
fn gateway_targets(directive: &str) -> String {
    const LAYERS: [&str; 5] = ["model", "storage", "cluster", "app", "front"];
    let (target, level) = match directive.split_once('=') {
        Some((t, l)) => (t.trim(), Some(l)),
        None => (directive.trim(), None),
    };
    let with_level = |t: &str| match level {
        Some(l) => format!("{t}={l}"),
        None => t.to_string(),
    };
    if target == "realtime_gateway" {
        let mut all = vec![with_level(target)];
        all.extend(LAYERS.iter().map(|l| with_level(&format!("rtg_{l}"))));
        return all.join(",");
    }
    if let Some(rest) = target.strip_prefix("realtime_gateway::") {
        let (layer, path) = rest.split_once("::").unwrap_or((rest, ""));
        if LAYERS.contains(&layer) {
            let t = if path.is_empty() { format!("rtg_{layer}") } else { format!("rtg_{layer}::{path}") };
            return with_level(&t);
        }
    }
    directive.to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn gateway_targets_name_the_layers_crates() {
        assert_eq!(
            super::log_directives(Some("info,realtime_gateway=debug")),
            "info,realtime_gateway=debug,rtg_model=debug,rtg_storage=debug,rtg_cluster=debug,rtg_app=debug,\
             rtg_front=debug,socketioxide=info,engineioxide=info"
        );
        assert_eq!(
            super::log_directives(Some("warn,realtime_gateway::app::events::private=debug")),
            "warn,rtg_app::events::private=debug,socketioxide=info,engineioxide=info"
        );
        assert_eq!(
            super::log_directives(Some("rtg_front=trace")),
            "rtg_front=trace,socketioxide=info,engineioxide=info"
        );
    }

    #[test]
    fn socket_io_targets_stay_at_info_unless_named() {
        assert_eq!(super::log_directives(Some("debug")), "debug,socketioxide=info,engineioxide=info");
        assert_eq!(super::log_directives(None), "info,socketioxide=info,engineioxide=info");
        assert_eq!(
            super::log_directives(Some("debug,socketioxide=debug")),
            "debug,socketioxide=debug,engineioxide=info"
        );
    }
}
