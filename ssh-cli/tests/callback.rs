//! The loopback listener driven by real HTTP requests.

use pedm_ssh::callback::{CallbackError, Listener};
use std::time::Duration;

const STATE: &str = "the-real-state-0123456789abcdef";

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

async fn start(
    timeout: Duration,
) -> (
    String,
    tokio::task::JoinHandle<Result<pedm_ssh::callback::Callback, CallbackError>>,
) {
    let listener = Listener::bind(0).await.unwrap();
    let port = listener.port();
    let uri = listener.redirect_uri();
    assert_eq!(uri, format!("http://127.0.0.1:{port}/callback"));
    let handle = tokio::spawn(async move { listener.wait(STATE, timeout).await });
    (uri, handle)
}

async fn get(url: &str) -> (u16, String) {
    let resp = client().get(url).send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap())
}

/// Gives the listener a moment to act if it (wrongly) decided to finish.
async fn still_waiting(handle: &tokio::task::JoinHandle<impl Sized>) -> bool {
    tokio::time::sleep(Duration::from_millis(100)).await;
    !handle.is_finished()
}

#[tokio::test]
async fn wrong_state_is_refused_and_the_right_one_then_wins() {
    let (uri, handle) = start(Duration::from_secs(30)).await;

    let (status, body) = get(&format!("{uri}?code=evil&state=forged")).await;
    assert_eq!(status, 400);
    assert!(body.contains("still waiting"), "{body}");
    assert!(
        !body.contains("forged"),
        "the page must not reflect input: {body}"
    );
    assert!(still_waiting(&handle).await);

    // Same length as the real state, one character off.
    let near = format!("{}X", &STATE[..STATE.len() - 1]);
    let (status, _) = get(&format!("{uri}?code=evil&state={near}")).await;
    assert_eq!(status, 400);
    // No state at all.
    let (status, _) = get(&format!("{uri}?code=evil")).await;
    assert_eq!(status, 400);
    // A forged IdP error without our state must not end the login either.
    let (status, _) = get(&format!("{uri}?error=access_denied&state=forged")).await;
    assert_eq!(status, 400);
    // Our state twice (ambiguous) is refused.
    let (status, _) = get(&format!("{uri}?code=c&state={STATE}&state={STATE}")).await;
    assert_eq!(status, 400);
    assert!(still_waiting(&handle).await);

    let (status, body) = get(&format!(
        "{uri}?code=the%2Fcode&state={STATE}&iss=http%3A%2F%2F127.0.0.1%3A9%2F"
    ))
    .await;
    assert_eq!(status, 200);
    assert!(body.contains("signed in, you can close this tab"), "{body}");
    let cb = handle.await.unwrap().unwrap();
    assert_eq!(cb.code, "the/code");
    assert_eq!(cb.state, STATE);
    assert_eq!(cb.iss.as_deref(), Some("http://127.0.0.1:9/"));

    // The port is closed afterwards.
    assert!(client().get(&uri).send().await.is_err());
}

#[tokio::test]
async fn missing_code_is_refused_and_waiting_continues() {
    let (uri, handle) = start(Duration::from_secs(30)).await;
    let (status, body) = get(&format!("{uri}?state={STATE}")).await;
    assert_eq!(status, 400);
    assert!(body.contains("no authorization code"), "{body}");
    let (status, _) = get(&format!("{uri}?state={STATE}&code=")).await;
    assert_eq!(status, 400);
    assert!(still_waiting(&handle).await);
    let (status, _) = get(&format!("{uri}?state={STATE}&code=ok")).await;
    assert_eq!(status, 200);
    let cb = handle.await.unwrap().unwrap();
    assert_eq!(cb.code, "ok");
    assert_eq!(cb.iss, None);
}

#[tokio::test]
async fn other_paths_are_404() {
    let (uri, handle) = start(Duration::from_secs(30)).await;
    let base = uri.trim_end_matches("/callback");
    for path in ["/", "/other", "/callback/x", "/favicon.ico"] {
        let (status, _) = get(&format!("{base}{path}?code=c&state={STATE}")).await;
        assert_eq!(status, 404, "{path}");
    }
    assert!(still_waiting(&handle).await);
    handle.abort();
}

#[tokio::test]
async fn wrong_host_header_is_refused() {
    let (uri, handle) = start(Duration::from_secs(30)).await;
    let resp = client()
        .get(format!("{uri}?code=c&state={STATE}"))
        .header("host", "evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    assert!(still_waiting(&handle).await);
    handle.abort();
}

#[tokio::test]
async fn access_denied_ends_the_login_as_a_denial() {
    let (uri, handle) = start(Duration::from_secs(30)).await;
    let (status, body) = get(&format!(
        "{uri}?error=access_denied&error_description=user%0Acancelled&state={STATE}"
    ))
    .await;
    assert_eq!(status, 200);
    assert!(body.contains("refused"), "{body}");
    match handle.await.unwrap() {
        Err(CallbackError::Denied { description }) => {
            assert_eq!(description.as_deref(), Some("user\ncancelled"))
        }
        other => panic!("expected a denial, got {other:?}"),
    }
}

#[tokio::test]
async fn other_idp_error_ends_the_login_as_an_error() {
    let (uri, handle) = start(Duration::from_secs(30)).await;
    let (status, _) = get(&format!("{uri}?error=server_error&state={STATE}")).await;
    assert_eq!(status, 200);
    match handle.await.unwrap() {
        Err(CallbackError::Idp { error, description }) => {
            assert_eq!(error, "server_error");
            assert_eq!(description, None);
        }
        other => panic!("expected an IdP error, got {other:?}"),
    }
}

#[tokio::test]
async fn gives_up_after_the_timeout() {
    let (_uri, handle) = start(Duration::from_millis(200)).await;
    match handle.await.unwrap() {
        Err(e @ CallbackError::TimedOut(_)) => assert!(e.to_string().contains("timed out")),
        other => panic!("expected a timeout, got {other:?}"),
    }
}

#[tokio::test]
async fn post_is_not_accepted() {
    let (uri, handle) = start(Duration::from_secs(30)).await;
    let resp = client()
        .post(format!("{uri}?code=c&state={STATE}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 405);
    assert!(still_waiting(&handle).await);
    handle.abort();
}
