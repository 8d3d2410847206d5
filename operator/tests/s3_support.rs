//! The throwaway S3 server of the test support works: objects go in and come back byte for
//! byte through aws-sdk-s3 with SigV4, wrong keys are refused, and the server is gone after
//! drop.

mod support;

use aws_sdk_s3::primitives::ByteStream;
use support::s3::S3Server;

#[tokio::test]
async fn throwaway_s3_stores_and_returns_objects() {
    let s3 = S3Server::start().await;
    let client = s3.client();
    let body: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();

    client
        .put_object()
        .bucket(s3.bucket())
        .key("dir/object.bin")
        .body(ByteStream::from(body.clone()))
        .send()
        .await
        .expect("put object");
    let got = client
        .get_object()
        .bucket(s3.bucket())
        .key("dir/object.bin")
        .send()
        .await
        .expect("get object");
    assert_eq!(got.content_length(), Some(body.len() as i64));
    let bytes = got.body.collect().await.expect("read body").into_bytes();
    assert_eq!(bytes.as_ref(), body.as_slice());

    let listed = client
        .list_objects_v2()
        .bucket(s3.bucket())
        .prefix("dir/")
        .send()
        .await
        .expect("list");
    let keys: Vec<_> = listed.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(keys, ["dir/object.bin"]);
}

#[tokio::test]
async fn throwaway_s3_refuses_wrong_credentials() {
    let s3 = S3Server::start().await;
    let intruder = s3.client_with_keys(s3.access_key(), "wrong-secret");
    let result = intruder.list_objects_v2().bucket(s3.bucket()).send().await;
    assert!(result.is_err(), "a wrong secret key must be refused");
    let missing = s3
        .client()
        .head_bucket()
        .bucket("no-such-bucket")
        .send()
        .await;
    assert!(missing.is_err(), "a missing bucket is reported");
}

#[tokio::test]
async fn throwaway_s3_is_removed_on_drop() {
    let s3 = S3Server::start().await;
    let storage = s3.storage_dir();
    let endpoint = s3.endpoint();
    assert!(storage.join(s3.bucket()).is_dir());
    drop(s3);
    assert!(!storage.exists());
    let port: u16 = endpoint
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the server is stopped"
    );
}
