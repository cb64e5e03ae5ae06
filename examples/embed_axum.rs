//! idemgate in-process: an axum app whose `POST /orders` is made idempotent by
//! [`idemgate::IdempotencyLayer`], keyed by the `Idempotency-Key` header, stored in SQLite.
//!
//! ```sh
//! cargo run --example embed_axum            # 127.0.0.1:3001 (or PORT), store in a temp dir
//! cargo run --example embed_axum -- /var/lib/orders/idemgate.db
//! curl -si -X POST localhost:3001/orders -H 'Idempotency-Key: k1'   # {"order":1}
//! curl -si -X POST localhost:3001/orders -H 'Idempotency-Key: k1'   # {"order":1}, Idempotent-Replayed: true
//! curl -si -X POST localhost:3001/orders -H 'Idempotency-Key: k2'   # {"order":2}
//! ```

use axum::routing::post;
use axum::{Json, Router};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A store path from the command line, or a temporary one that lives as long as the app.
    let temp = tempfile::tempdir()?;
    let db = std::env::args().nth(1).map_or_else(|| temp.path().join("idemgate.db"), Into::into);
    let idempotency = idemgate::IdempotencyLayer::from_yaml(&format!(
        "store: {{ sqlite: {{ path: {} }} }}
routes:
  - name: orders
    match: {{ path: /orders, methods: [POST] }}
    key: {{ header: Idempotency-Key }}
",
        db.display()
    ))
    .await?;

    // The handler counts its own calls: a replayed duplicate never reaches it.
    let orders = Arc::new(AtomicU64::new(0));
    let app = Router::new()
        .route(
            "/orders",
            post(move || {
                let n = orders.fetch_add(1, Ordering::SeqCst) + 1;
                async move { Json(serde_json::json!({ "order": n })) }
            }),
        )
        .layer(idempotency);

    let port = std::env::var("PORT").unwrap_or_else(|_| "3001".into());
    let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}")).await?;
    println!("listening on http://{} (store {})", listener.local_addr()?, db.display());
    axum::serve(listener, app).await?;
    Ok(())
}
