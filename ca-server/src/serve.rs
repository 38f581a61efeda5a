//! `pedm-ca serve`: open the CA, keep the bundle fresh, answer HTTP, checkpoint on shutdown.

use crate::authority::Authority;
use crate::config::Config;
use crate::http::{router, AppState};
use crate::metrics::Metrics;
use crate::oidc::{RelyingParty, RpSettings};
use crate::signer::{check_private_file_mode, Passphrase};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Finds the key passphrase: `PEDM_CA_PASSPHRASE`, else a 0600 file. `None`: keys must be
/// unencrypted.
pub fn passphrase(file: Option<&Path>) -> anyhow::Result<Option<Passphrase>> {
    if let Some(path) = file {
        check_private_file_mode(path)?;
        let text = std::fs::read_to_string(path).map_err(|e| {
            anyhow::anyhow!("cannot read the passphrase file {}: {e}", path.display())
        })?;
        let text = text.trim_end_matches(['\n', '\r']).to_string();
        if text.is_empty() {
            anyhow::bail!("the passphrase file {} is empty", path.display());
        }
        return Ok(Some(Passphrase::new(text)));
    }
    match std::env::var("PEDM_CA_PASSPHRASE") {
        Ok(p) if !p.is_empty() => Ok(Some(Passphrase::new(p))),
        _ => Ok(None),
    }
}

/// Runs the CA until SIGINT or SIGTERM.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let pass = passphrase(config.passphrase_file.as_deref())?;
    let authority = Authority::open(
        &config.data_dir,
        pass.as_ref(),
        config.audit.checkpoint_every,
    )?;
    let lifetime = config.bundle.lifetime.0.as_secs() as i64;
    let bundle = authority.ensure_bundle(lifetime)?;
    tracing::info!(version = bundle.version, active_key = %authority.active_key(), "trust bundle ready");
    let rp = match &config.oidc {
        Some(o) => Some(RelyingParty::new(RpSettings {
            issuer: o.issuer.clone(),
            client_id: o.client_id.clone(),
            client_secret: o.client_secret()?,
            max_age: o.max_age.0,
            clock_skew: config.certs.clock_skew.0,
        })?),
        None => None,
    };
    let state = Arc::new(AppState {
        elevations: config.elevations(),
        rp,
        policy: config.policy(),
        authority,
        config: config.clone(),
        metrics: Metrics::default(),
        device_logins: Default::default(),
        tokens: crate::token::TokenExchange::new(&config.trusted_issuers)?,
    });
    let app = router(state.clone());

    let listener = std::net::TcpListener::bind(config.listen)
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    listener.set_nonblocking(true)?;
    let addr: SocketAddr = listener.local_addr()?;
    println!("listening on {addr}");

    let sweeper = {
        let state = state.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                let s = state.clone();
                let r =
                    tokio::task::spawn_blocking(move || crate::http::elevations::sweep(&s)).await;
                if let Ok(Err(e)) = r {
                    tracing::error!("recording elevation time-outs failed: {e}");
                }
            }
        })
    };
    let krl_lifetime = config.krl.lifetime.0.as_secs() as i64;
    authority_krl(&state, krl_lifetime).await?;
    let refresher = {
        let state = state.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let s = state.clone();
                let r = tokio::task::spawn_blocking(move || {
                    s.authority.reload_signer()?;
                    s.authority.retire_expired_keys(lifetime)?;
                    s.authority.ensure_bundle(lifetime)?;
                    s.authority.ensure_krl(krl_lifetime)
                })
                .await;
                if let Ok(Err(e)) = r {
                    tracing::error!("re-signing the trust bundle or the KRL failed: {e}");
                }
            }
        })
    };

    let handle = axum_server::Handle::new();
    let shutdown = handle.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        shutdown.graceful_shutdown(Some(Duration::from_secs(10)));
    });

    match &config.tls {
        Some(tls) => {
            let _ = rustls::crypto::ring::default_provider().install_default();
            let tls_config =
                axum_server::tls_rustls::RustlsConfig::from_pem_file(&tls.cert_file, &tls.key_file)
                    .await
                    .map_err(|e| {
                        anyhow::anyhow!(
                            "tls: cannot load {} / {}: {e}",
                            tls.cert_file.display(),
                            tls.key_file.display()
                        )
                    })?;
            axum_server::from_tcp_rustls(listener, tls_config)?
                .handle(handle)
                .serve(app.into_make_service())
                .await?;
        }
        None => {
            axum_server::from_tcp(listener)?
                .handle(handle)
                .serve(app.into_make_service())
                .await?;
        }
    }
    refresher.abort();
    sweeper.abort();
    // Time-based elevation transitions that came due since the last sweep go into the log
    // before the final checkpoint covers it.
    let s = state.clone();
    tokio::task::spawn_blocking(move || {
        if let Err(e) = crate::http::elevations::sweep(&s) {
            tracing::error!("recording elevation time-outs at shutdown failed: {e}");
        }
        s.authority.checkpoint()
    })
    .await??;
    tracing::info!("stopped; audit checkpoint written");
    Ok(())
}

/// Publishes the first KRL (or a fresh one) before the CA answers anyone.
async fn authority_krl(state: &Arc<AppState>, lifetime: i64) -> anyhow::Result<()> {
    let s = state.clone();
    let row = tokio::task::spawn_blocking(move || s.authority.ensure_krl(lifetime)).await??;
    tracing::info!(version = row.version, "KRL ready");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
}
