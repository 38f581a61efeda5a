//! `pedm-ssh approve`, `deny`, `cancel` and `revoke`: decisions on an elevation request.
//!
//! `approve` shows the request first (requester, elevation, principals, reason, duration,
//! the requester's recent elevations) and asks on the terminal; without one, `--yes` is
//! required, and without it nothing is fetched or sent (exit 2). Comments follow the rule
//! of reasons and are checked before anything is sent.

use crate::app::Ctx;
use crate::cli::{ApproveArgs, CancelArgs, DenyArgs, RevokeArgs};
use crate::elevview::{approvers, request_block};
use crate::escape::escape;
use crate::exit::{Exit, Failure};
use crate::signedin::SignedIn;
use crate::{reason, timefmt};
use pedm_api::{DecisionRequest, ElevationAction, ElevationState, ElevationView};
use std::io::{BufRead, Write};

/// Whether an answer to `approve? [y/N]` is a yes: `y` or `yes`, any case; anything else,
/// including an empty line or end of input, is no.
pub fn is_yes(answer: &str) -> bool {
    matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}

/// Asks `question [y/N] ` on stderr and reads one line from stdin.
fn confirm(question: &str) -> Result<bool, Failure> {
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| {
            Failure::plain(
                Exit::Error,
                format!("cannot read the answer: {e}; pass --yes to skip the question"),
            )
        })?;
    Ok(is_yes(&answer))
}

fn comment_request(comment: Option<&str>) -> Result<DecisionRequest, Failure> {
    if let Some(c) = comment {
        reason::require_valid(c, "--comment")?;
    }
    Ok(DecisionRequest {
        comment: comment.map(str::to_string),
    })
}

/// `ID (bob's db-admin)`, escaped.
fn subject(v: &ElevationView) -> String {
    format!(
        "{} ({}'s {})",
        escape(&v.id),
        escape(&v.requester),
        escape(&v.elevation)
    )
}

/// The line after an approval, by the state the CA answers with.
pub fn approved_text(v: &ElevationView) -> String {
    match v.state {
        ElevationState::Pending => format!(
            "your approval of {} is recorded; {} more needed",
            subject(v),
            v.approvals_needed
        ),
        ElevationState::Approved | ElevationState::Active => {
            format!("approved {}: approved by {}", subject(v), approvers(v))
        }
        s => format!("request {} is now {}", subject(v), s.as_str()),
    }
}

/// `pedm-ssh approve ID [--comment TEXT] [--yes]`.
pub async fn approve(ctx: &Ctx, args: &ApproveArgs) -> Result<(), Failure> {
    if !args.yes && !ctx.stdin_is_terminal {
        return Err(Failure::new(
            Exit::Usage,
            "approve asks for confirmation on the terminal, and stdin is not a terminal; nothing was sent",
            "run it in a terminal, or pass --yes to approve without the question",
        ));
    }
    let req = comment_request(args.comment.as_deref())?;
    let s = SignedIn::load(ctx, args.ca.as_deref())?;
    let view = s
        .client
        .elevation(s.token(), &args.id)
        .await
        .map_err(|e| s.fail(&e))?;
    println!("request {}", escape(&view.id));
    print!("{}", request_block(&view, timefmt::now_unix()));
    let _ = std::io::stdout().flush();
    if view.state != ElevationState::Pending {
        return Err(Failure::new(
            Exit::Error,
            format!(
                "request {} is {}, not pending: there is nothing to approve",
                escape(&view.id),
                view.state.as_str()
            ),
            "check `pedm-ssh requests` for the requests that wait for you",
        ));
    }
    if !args.yes && !confirm("approve?")? {
        return Err(Failure::plain(
            Exit::Error,
            "not approved: nothing was sent (answer y to approve)",
        ));
    }
    let after = s
        .client
        .decide_elevation(s.token(), &args.id, ElevationAction::Approve, &req)
        .await
        .map_err(|e| s.fail(&e))?;
    println!("{}", approved_text(&after));
    Ok(())
}

/// `pedm-ssh deny ID --comment TEXT`.
pub async fn deny(ctx: &Ctx, args: &DenyArgs) -> Result<(), Failure> {
    let req = comment_request(Some(&args.comment))?;
    let s = SignedIn::load(ctx, args.ca.as_deref())?;
    let after = s
        .client
        .decide_elevation(s.token(), &args.id, ElevationAction::Deny, &req)
        .await
        .map_err(|e| s.fail(&e))?;
    println!("denied {}: now {}", subject(&after), after.state.as_str());
    Ok(())
}

/// `pedm-ssh cancel ID`.
pub async fn cancel(ctx: &Ctx, args: &CancelArgs) -> Result<(), Failure> {
    let s = SignedIn::load(ctx, args.ca.as_deref())?;
    let after = s
        .client
        .decide_elevation(
            s.token(),
            &args.id,
            ElevationAction::Cancel,
            &DecisionRequest::default(),
        )
        .await
        .map_err(|e| s.fail(&e))?;
    println!(
        "cancelled {}: now {}",
        subject(&after),
        after.state.as_str()
    );
    Ok(())
}

/// `pedm-ssh revoke ID [--comment TEXT]`.
pub async fn revoke(ctx: &Ctx, args: &RevokeArgs) -> Result<(), Failure> {
    let req = comment_request(args.comment.as_deref())?;
    let s = SignedIn::load(ctx, args.ca.as_deref())?;
    let after = s
        .client
        .decide_elevation(s.token(), &args.id, ElevationAction::Revoke, &req)
        .await
        .map_err(|e| s.fail(&e))?;
    println!("revoked {}: now {}", subject(&after), after.state.as_str());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elevview::test_support::view;

    #[test]
    fn yes_means_y_or_yes_only() {
        for y in ["y", "Y", "yes", "YES\n", " y \n"] {
            assert!(is_yes(y), "{y:?}");
        }
        for n in ["", "\n", "n", "no", "yep", "y y", "ja"] {
            assert!(!is_yes(n), "{n:?}");
        }
    }

    #[test]
    fn approval_outcome_lines() {
        let mut v = view(ElevationState::Pending);
        v.approvals_needed = 1;
        assert_eq!(
            approved_text(&v),
            "your approval of k3j9x0q2m1ab (bob's db-admin) is recorded; 1 more needed"
        );
        v.state = ElevationState::Approved;
        v.approved_by = vec!["carol".into()];
        assert_eq!(
            approved_text(&v),
            "approved k3j9x0q2m1ab (bob's db-admin): approved by carol"
        );
        v.requester = "b\nob".into();
        assert!(!approved_text(&v).contains('\n'));
    }

    #[test]
    fn comments_follow_the_reason_rule() {
        assert!(comment_request(None).unwrap().comment.is_none());
        assert_eq!(
            comment_request(Some("ok")).unwrap().comment.as_deref(),
            Some("ok")
        );
        assert_eq!(comment_request(Some("a\nb")).unwrap_err().exit, Exit::Error);
    }
}
