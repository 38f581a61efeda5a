//! `pedm-ssh status`: who the CA thinks we are, what we may log in as, how long the
//! session and the certificate have left, and how far our clock is from the CA's.
//!
//! Times left are counted on the CA's clock (the hosts are assumed to agree with it), and
//! the skew is shown so a wrong local clock explains itself.

use crate::app::Ctx;
use crate::certfile;
use crate::cli::StatusArgs;
use crate::escape::{escape, escape_list};
use crate::exit::{self, Failure};
use crate::{paths, session, timefmt};
use pedm_api::Client;

/// `pedm-ssh status`. Exit 3 without a session or when the CA says it is gone.
pub async fn run(ctx: &Ctx, args: &StatusArgs) -> Result<(), Failure> {
    let session_path = paths::session_file(&ctx.env)?;
    let Some(saved) = session::load(&session_path)? else {
        return Err(Failure::not_signed_in(args.ca.as_deref()));
    };
    let ca_url = args.ca.clone().unwrap_or_else(|| saved.ca_url.clone());
    let client = Client::new(&ca_url).map_err(|e| exit::from_client(&e, &ca_url))?;
    let info = client
        .session(&saved.session_token)
        .await
        .map_err(|e| exit::from_client(&e, &ca_url))?;
    let skew = info.ca_time.saturating_sub(timefmt::now_unix());
    let key_path = args.key.clone().unwrap_or_else(|| saved.key_path.clone());

    if args.json {
        let cert = certfile::load(&key_path)?;
        let elevated: Vec<_> = paths::elevation_certificates(&key_path)
            .into_iter()
            .filter_map(|p| certfile::load_at(p).ok().flatten())
            .map(|c| cert_json(&c))
            .collect();
        let doc = serde_json::json!({
            "ca": ca_url,
            "session": info,
            "certificate": cert.as_ref().map(cert_json),
            "elevated_certificates": elevated,
            "clock_skew_secs": skew,
        });
        let text = crate::escape::to_json_pretty(&doc).map_err(|e| {
            Failure::new(
                crate::exit::Exit::Error,
                format!("cannot print JSON: {e}"),
                "try again without --json",
            )
        })?;
        println!("{text}");
        if let Some(w) = timefmt::skew_warning(skew) {
            eprintln!("warning: {w}");
        }
        return Ok(());
    }

    println!("signed in as {}", escape(&info.user));
    println!(
        "identity: {} (issuer {}, via {})",
        escape(&info.subject),
        escape(&info.issuer),
        escape(&info.method)
    );
    println!("groups: {}", escape_list(&info.groups));
    println!("roles: {}", escape_list(&info.roles));
    println!("principals: {}", escape_list(&info.principals));
    println!(
        "session until: {} ({})",
        timefmt::utc(info.expires_at),
        timefmt::relative(info.expires_at, info.ca_time)
    );
    match certfile::load(&key_path)? {
        Some(c) => {
            println!("certificate: {}", c.path.display());
            println!(
                "certificate until: {} ({})",
                timefmt::utc(c.valid_before),
                timefmt::relative(c.valid_before, info.ca_time)
            );
            println!("certificate principals: {}", escape_list(&c.principals));
            println!(
                "certificate serial: {} (key id {})",
                c.serial,
                escape(&c.key_id)
            );
        }
        None => println!(
            "certificate: none at {} (run `pedm-ssh cert`)",
            paths::certificate_of(&key_path).display()
        ),
    }
    for path in paths::elevation_certificates(&key_path) {
        // An unreadable leftover is not worth failing `status` for.
        if let Ok(Some(c)) = certfile::load_at(path) {
            println!(
                "elevated certificate: {} (principals {}; until {}, {})",
                c.path.display(),
                escape_list(&c.principals),
                timefmt::utc(c.valid_before),
                timefmt::relative(c.valid_before, info.ca_time)
            );
        }
    }
    println!("clock skew: {}", timefmt::skew_text(skew));
    if let Some(w) = timefmt::skew_warning(skew) {
        eprintln!("warning: {w}");
    }
    println!("CA: {}", escape(&ca_url));
    Ok(())
}

fn cert_json(c: &certfile::CertInfo) -> serde_json::Value {
    serde_json::json!({
        "path": c.path,
        "serial": c.serial,
        "key_id": c.key_id,
        "principals": c.principals,
        "valid_after": c.valid_after,
        "valid_before": c.valid_before,
    })
}
