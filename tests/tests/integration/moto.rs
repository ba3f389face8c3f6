//! The moto harness itself (`keyhold_tests::moto`): its front door refuses connections while
//! shut, opens again on the same address, cuts a transfer in the middle, and moto keeps its
//! buckets, objects and KMS keys through all of it.

use anyhow::{ensure, Context, Result};
use keyhold_tests::{moto_ip, Moto};

/// An S3 client for the system-under-test side: through the front door.
async fn s3_through_front_door(moto: &Moto) -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::config::Builder::from(&moto.sdk_config().await)
        .endpoint_url(moto.endpoint())
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

#[tokio::test]
async fn moto_front_door_shuts_cuts_and_reopens_with_moto_state_kept() -> Result<()> {
    let moto = Moto::start(moto_ip(6)).await?;
    moto.create_bucket("door-test").await?;
    let key_id = moto.create_kms_key("door-test").await?;
    let s3 = s3_through_front_door(&moto).await;
    s3.put_object()
        .bucket("door-test")
        .key("before")
        .body(b"kept".to_vec().into())
        .send()
        .await
        .context("put through the open door")?;
    let door = moto
        .endpoint()
        .trim_start_matches("http://")
        .parse::<std::net::SocketAddr>()?;

    moto.set_reachable(false).await?;
    let refused = tokio::net::TcpStream::connect(door).await;
    ensure!(
        refused.as_ref().err().map(std::io::Error::kind)
            == Some(std::io::ErrorKind::ConnectionRefused),
        "a shut door refuses connections: {refused:?}"
    );
    ensure!(
        s3.list_objects_v2()
            .bucket("door-test")
            .send()
            .await
            .is_err(),
        "S3 through the shut door fails"
    );
    ensure!(
        moto.object_keys("door-test").await? == ["before"],
        "the harness still sees moto directly"
    );

    moto.set_reachable(true).await?;
    let listed = s3.list_objects_v2().bucket("door-test").send().await?;
    ensure!(
        listed
            .contents()
            .iter()
            .filter_map(|o| o.key())
            .collect::<Vec<_>>()
            == ["before"],
        "the same address serves again, objects kept: {listed:?}"
    );
    let described = moto
        .kms()
        .await
        .describe_key()
        .key_id("alias/door-test")
        .send()
        .await?;
    ensure!(
        described.key_metadata().map(|m| m.key_id()) == Some(key_id.as_str()),
        "the KMS key and its alias survived the outage"
    );

    // A cut in the middle of a 1 MiB upload: the upload fails, the door is shut afterwards.
    moto.cut_after(64 * 1024);
    let upload = s3
        .put_object()
        .bucket("door-test")
        .key("cut")
        .body(vec![0u8; 1024 * 1024].into())
        .send()
        .await;
    ensure!(upload.is_err(), "an upload cut in the middle fails");
    ensure!(!moto.is_reachable(), "a cut leaves the door shut");
    moto.set_reachable(true).await?;
    ensure!(
        moto.object_keys("door-test").await? == ["before"],
        "nothing was stored by the cut upload"
    );
    Ok(())
}
