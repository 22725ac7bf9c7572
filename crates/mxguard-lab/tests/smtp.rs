//! The lab's scripted SMTP hosts answer a real TCP client the way their
//! script says: banners, EHLO extensions, RCPT and MAIL answers by pattern,
//! DATA, STARTTLS with the lab CA, and the failure modes (silent, refused,
//! busy). The client here is a few lines of raw tokio, so what is tested is
//! the bytes on the wire. Every address is in 127.0.0.0/8 and every port is
//! chosen at run time, so these tests run in parallel with each other and
//! with anything else on the machine.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use mxguard_lab::smtp::reply;
use mxguard_lab::{
    Behaviour, DataAnswer, HostScript, LabCa, LabCert, LabSmtp, LabSmtpSet, StartTls, Validity, tls,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// How long the client waits for any reply before calling the test failed.
const WAIT: Duration = Duration::from_secs(3);

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

async fn host(script: HostScript) -> LabSmtp {
    LabSmtp::start(ip("127.0.0.1"), 0, script)
        .await
        .expect("start lab SMTP host")
}

/// One reply as the client read it: the code and the text of every line.
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    code: u16,
    lines: Vec<String>,
}

impl Answer {
    fn text(&self) -> &str {
        self.lines.last().map_or("", String::as_str)
    }
}

/// A minimal SMTP client: write a line, read a (multi-line) reply.
struct Client<S> {
    io: BufReader<S>,
}

impl Client<TcpStream> {
    async fn connect(addr: SocketAddr) -> Client<TcpStream> {
        let tcp = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .unwrap()
            .unwrap();
        Client {
            io: BufReader::new(tcp),
        }
    }

    /// Hand the TCP stream to a TLS client after the server's `220`.
    async fn tls(
        self,
        config: Arc<ClientConfig>,
        name: &str,
    ) -> io::Result<Client<TlsStream<TcpStream>>> {
        assert!(
            self.io.buffer().is_empty(),
            "server sent bytes before the handshake"
        );
        let server = ServerName::try_from(name.to_string()).unwrap();
        let connect = TlsConnector::from(config).connect(server, self.io.into_inner());
        let tls = tokio::time::timeout(WAIT, connect).await.unwrap()?;
        Ok(Client {
            io: BufReader::new(tls),
        })
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    async fn send(&mut self, text: &str) {
        self.io
            .get_mut()
            .write_all(format!("{text}\r\n").as_bytes())
            .await
            .unwrap();
    }

    async fn read_line(&mut self) -> Option<String> {
        let mut line = String::new();
        let n = tokio::time::timeout(WAIT, self.io.read_line(&mut line))
            .await
            .unwrap()
            .unwrap();
        (n > 0).then_some(line)
    }

    async fn reply(&mut self) -> Answer {
        let mut lines = Vec::new();
        loop {
            let line = self.read_line().await.expect("a reply, not end of stream");
            assert!(line.ends_with("\r\n"), "reply line without CRLF: {line:?}");
            let code = line[..3].parse().expect("three-digit code");
            lines.push(line[4..line.len() - 2].to_string());
            match line.as_bytes()[3] {
                b'-' => continue,
                b' ' => return Answer { code, lines },
                other => panic!("bad separator {other:?} in {line:?}"),
            }
        }
    }

    async fn cmd(&mut self, line: &str) -> Answer {
        self.send(line).await;
        self.reply().await
    }

    /// The server closed the connection (after the replies read so far).
    async fn assert_closed(&mut self) {
        let mut rest = Vec::new();
        let read = tokio::time::timeout(WAIT, self.io.read_to_end(&mut rest))
            .await
            .unwrap();
        // A reset after the close is as good as an orderly end here.
        if let Ok(n) = read {
            assert_eq!(
                n,
                0,
                "unexpected bytes: {:?}",
                String::from_utf8_lossy(&rest)
            );
        }
    }
}

/// A client that trusts exactly `roots`, over the ring provider.
fn client_config(roots: RootCertStore) -> Arc<ClientConfig> {
    let config = ClientConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// A client that trusts the lab CA, read from its PEM as `--ca-file` will.
fn trusting(ca: &LabCa) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca.cert_pem().as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    assert_eq!(roots.len(), 1);
    client_config(roots)
}

/// Accepts any certificate but still checks the handshake signatures: it
/// tells "the TLS handshake works" apart from "the certificate verifies".
#[derive(Debug)]
struct AcceptAnyCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn not_verifying() -> Arc<ClientConfig> {
    let provider = tls::provider();
    let config = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
        .with_no_client_auth();
    Arc::new(config)
}

/// The rustls error inside a failed handshake's `io::Error`, if there is one.
fn rustls_error(err: &io::Error) -> Option<&rustls::Error> {
    err.get_ref()?.downcast_ref::<rustls::Error>()
}

/// Connect, read the banner, EHLO, STARTTLS, and hand over to TLS.
async fn starttls(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> io::Result<Client<TlsStream<TcpStream>>> {
    let mut c = Client::connect(addr).await;
    assert_eq!(c.reply().await.code, 220);
    assert!(
        c.cmd("EHLO client.lab")
            .await
            .lines
            .contains(&"STARTTLS".to_string())
    );
    assert_eq!(c.cmd("STARTTLS").await.code, 220);
    c.tls(config, "mx.example.lab").await
}

#[tokio::test]
async fn banner_defaults_to_name_and_can_be_scripted() {
    let plain = host(HostScript::new("mx1.example.lab")).await;
    let mut c = Client::connect(plain.addr()).await;
    assert_eq!(
        c.reply().await,
        Answer {
            code: 220,
            lines: vec!["mx1.example.lab ESMTP lab".into()]
        }
    );
    let custom = host(
        HostScript::new("mx2.example.lab").banner((220, "mx2 Microsoft ESMTP MAIL Service ready")),
    )
    .await;
    let mut c = Client::connect(custom.addr()).await;
    assert_eq!(
        c.reply().await.text(),
        "mx2 Microsoft ESMTP MAIL Service ready"
    );
}

#[tokio::test]
async fn ehlo_advertises_the_scripted_extensions_in_order() {
    let exts = [
        "SIZE 10240000",
        "PIPELINING",
        "8BITMIME",
        "SMTPUTF8",
        "CHUNKING",
        "ENHANCEDSTATUSCODES",
    ];
    let h = host(HostScript::new("mx.example.lab").extensions(exts)).await;
    let mut c = Client::connect(h.addr()).await;
    c.reply().await;
    let ehlo = c.cmd("EHLO client.lab").await;
    assert_eq!(ehlo.code, 250);
    assert_eq!(ehlo.lines[0], "mx.example.lab");
    assert_eq!(ehlo.lines[1..], exts.map(String::from));

    // Offering STARTTLS adds the keyword; it is not there otherwise.
    let tls = host(
        HostScript::new("mx.example.lab")
            .extensions(["8BITMIME"])
            .starttls(StartTls::CloseAfterReady),
    )
    .await;
    let mut c = Client::connect(tls.addr()).await;
    c.reply().await;
    assert_eq!(
        c.cmd("EHLO client.lab").await.lines,
        vec!["mx.example.lab", "8BITMIME", "STARTTLS"]
    );
}

#[tokio::test]
async fn refused_ehlo_leaves_helo() {
    let h = host(HostScript::new("old.example.lab").refuse_ehlo()).await;
    let mut c = Client::connect(h.addr()).await;
    c.reply().await;
    let ehlo = c.cmd("EHLO client.lab").await;
    assert_eq!(
        (ehlo.code, ehlo.text()),
        (500, "5.5.1 command unrecognized")
    );
    assert_eq!(
        c.cmd("MAIL FROM:<a@client.lab>").await.code,
        503,
        "EHLO refused: not greeted yet"
    );
    assert_eq!(
        c.cmd("HELO client.lab").await,
        Answer {
            code: 250,
            lines: vec!["old.example.lab".into()]
        }
    );
    assert_eq!(c.cmd("MAIL FROM:<a@client.lab>").await.code, 250);
    let codes: Vec<(String, u16)> = h
        .transcript()
        .into_iter()
        .map(|e| (e.command, e.reply.code()))
        .collect();
    assert_eq!(codes[0], ("EHLO client.lab".to_string(), 500));
    assert_eq!(codes[2], ("HELO client.lab".to_string(), 250));
}

#[tokio::test]
async fn rcpt_answers_follow_patterns_in_order() {
    let script = HostScript::new("mx.example.lab")
        .rcpt("postmaster@example.lab", (250, "2.1.5 postmaster ok"))
        .rcpt("Alice@Example.Lab", (250, "2.1.5 alice ok"))
        .rcpt("list-*", (450, "4.2.1 mailbox busy"))
        .rcpt("*@example.lab", (550, "5.1.1 no such user"))
        .rcpt_default((554, "5.7.1 relay access denied"));
    let h = host(script).await;
    let mut c = Client::connect(h.addr()).await;
    c.reply().await;
    c.cmd("EHLO client.lab").await;
    assert_eq!(c.cmd("MAIL FROM:<probe@client.lab>").await.code, 250);
    let cases = [
        ("<alice@example.lab>", 250, "2.1.5 alice ok"),
        ("<POSTMASTER@example.lab>", 250, "2.1.5 postmaster ok"),
        ("<list-dev@example.lab>", 450, "4.2.1 mailbox busy"),
        ("<nobody-xyz@example.lab>", 550, "5.1.1 no such user"),
        ("<someone@elsewhere.lab>", 554, "5.7.1 relay access denied"),
        (
            "someone@elsewhere.lab",
            501,
            "5.1.3 bad recipient address syntax",
        ),
    ];
    for (rcpt, code, text) in cases {
        let answer = c.cmd(&format!("RCPT TO:{rcpt}")).await;
        assert_eq!((answer.code, answer.text()), (code, text), "RCPT TO:{rcpt}");
    }
    assert_eq!(c.cmd("RSET").await.code, 250);
    assert_eq!(c.cmd("QUIT").await.code, 221);
    c.assert_closed().await;

    // A probe must never reach DATA: the transcript lets a test say so.
    assert!(!h.saw("DATA"));
    assert!(h.saw("rcpt"));
    assert_eq!(h.commands().len(), 2 + cases.len() + 2);
    assert!(h.messages().is_empty());
}

#[tokio::test]
async fn null_sender_can_be_rejected() {
    let h = host(HostScript::new("mx.example.lab").mail("<>", (550, "5.7.1 null sender refused")))
        .await;
    let mut c = Client::connect(h.addr()).await;
    c.reply().await;
    c.cmd("EHLO client.lab").await;
    let null = c.cmd("MAIL FROM:<>").await;
    assert_eq!((null.code, null.text()), (550, "5.7.1 null sender refused"));
    assert_eq!(
        c.cmd("RCPT TO:<postmaster@example.lab>").await.code,
        503,
        "no transaction after a rejected MAIL"
    );
    assert_eq!(
        c.cmd("MAIL FROM:<someone@client.lab> SIZE=100").await,
        Answer {
            code: 250,
            lines: vec!["2.1.0 ok".into()]
        }
    );
}

#[tokio::test]
async fn greylisting_answers_4xx_and_data_is_refused_without_recipients() {
    let h = host(
        HostScript::new("grey.example.lab")
            .rcpt_default((451, "4.7.1 greylisted, try again later")),
    )
    .await;
    let mut c = Client::connect(h.addr()).await;
    c.reply().await;
    c.cmd("EHLO client.lab").await;
    c.cmd("MAIL FROM:<a@client.lab>").await;
    let rcpt = c.cmd("RCPT TO:<bob@example.lab>").await;
    assert_eq!(
        (rcpt.code, rcpt.text()),
        (451, "4.7.1 greylisted, try again later")
    );
    assert_eq!(c.cmd("DATA").await.code, 503);
}

#[tokio::test]
async fn data_is_stored_with_its_envelope() {
    let h = host(HostScript::new("mx.example.lab")).await;
    let mut c = Client::connect(h.addr()).await;
    c.reply().await;
    c.cmd("EHLO client.lab").await;
    c.cmd("MAIL FROM:<a@client.lab>").await;
    c.cmd("RCPT TO:<b@example.lab>").await;
    c.cmd("RCPT TO:<c@example.lab>").await;
    assert_eq!(c.cmd("DATA").await.code, 354);
    c.send("Subject: hi\r\n\r\n..leading dot\r\nbody").await;
    let end = c.cmd(".").await;
    assert_eq!(
        end,
        Answer {
            code: 250,
            lines: vec!["2.0.0 ok queued".into()]
        }
    );
    let messages = h.messages();
    assert_eq!(messages.len(), 1);
    let m = &messages[0];
    assert_eq!(
        (m.helo.as_str(), m.mail_from.as_str(), m.tls),
        ("client.lab", "a@client.lab", false)
    );
    assert_eq!(m.rcpt_to, vec!["b@example.lab", "c@example.lab"]);
    assert_eq!(m.data, b"Subject: hi\r\n\r\n.leading dot\r\nbody\r\n");
    let tail: Vec<_> = h
        .transcript()
        .into_iter()
        .rev()
        .take(2)
        .map(|e| (e.command, e.reply.code()))
        .collect();
    assert_eq!(
        tail,
        vec![(".".to_string(), 250), ("DATA".to_string(), 354)]
    );

    // The transaction is over: a new one needs MAIL again.
    assert_eq!(c.cmd("RCPT TO:<b@example.lab>").await.code, 503);
}

#[tokio::test]
async fn data_answers_can_be_scripted() {
    let at_command = host(
        HostScript::new("a.lab").data(DataAnswer::AtCommand((554, "5.7.0 no data here").into())),
    )
    .await;
    let after = host(
        HostScript::new("b.lab").data(DataAnswer::AfterData((552, "5.2.2 mailbox full").into())),
    )
    .await;
    for (h, first, last) in [(&at_command, 554, None), (&after, 354, Some(552))] {
        let mut c = Client::connect(h.addr()).await;
        c.reply().await;
        c.cmd("HELO client.lab").await;
        c.cmd("MAIL FROM:<a@client.lab>").await;
        c.cmd("RCPT TO:<b@example.lab>").await;
        assert_eq!(c.cmd("DATA").await.code, first);
        if let Some(last) = last {
            c.send("hello").await;
            assert_eq!(c.cmd(".").await.code, last);
        }
        assert!(
            h.messages().is_empty(),
            "{}: a refused message is not stored",
            h.name()
        );
    }
}

#[tokio::test]
async fn lf_dot_crlf_does_not_end_data() {
    let h = host(HostScript::new("mx.example.lab")).await;
    let mut c = Client::connect(h.addr()).await;
    c.reply().await;
    c.cmd("HELO client.lab").await;
    c.cmd("MAIL FROM:<a@client.lab>").await;
    c.cmd("RCPT TO:<b@example.lab>").await;
    c.cmd("DATA").await;
    // SMTP smuggling: a bare LF before the dot must not end the message.
    c.send("one\n.\r\nMAIL FROM:<smuggled@evil.lab>").await;
    assert_eq!(c.cmd(".").await.code, 250);
    assert_eq!(
        h.messages()[0].data,
        b"one\n.\r\nMAIL FROM:<smuggled@evil.lab>\r\n"
    );
    assert!(!h.commands().iter().any(|c| c.contains("smuggled")));
}

#[tokio::test]
async fn oversized_input_is_refused_and_the_session_goes_on() {
    let h = host(HostScript::new("mx.example.lab").max_message_bytes(1000)).await;
    let mut c = Client::connect(h.addr()).await;
    c.reply().await;
    let long = format!("HELO {}", "x".repeat(50_000));
    assert_eq!(
        c.cmd(&long).await,
        Answer {
            code: 500,
            lines: vec!["5.5.2 line too long".into()]
        }
    );
    assert_eq!(c.cmd("NOOP").await.code, 250);
    c.cmd("HELO client.lab").await;
    c.cmd("MAIL FROM:<a@client.lab>").await;
    c.cmd("RCPT TO:<b@example.lab>").await;
    c.cmd("DATA").await;
    for _ in 0..40 {
        c.send(&"y".repeat(98)).await;
    }
    assert_eq!(c.cmd(".").await.code, 552);
    assert!(h.messages().is_empty());
    assert_eq!(c.cmd("NOOP").await.code, 250);
}

#[tokio::test]
async fn other_commands_and_sequencing() {
    let h = host(HostScript::new("mx.example.lab").extensions(["CHUNKING"])).await;
    let mut c = Client::connect(h.addr()).await;
    c.reply().await;
    assert_eq!(c.cmd("MAIL FROM:<a@client.lab>").await.code, 503);
    assert_eq!(c.cmd("DATA").await.code, 503);
    c.cmd("EHLO client.lab").await;
    assert_eq!(c.cmd("VRFY bob").await.code, 252);
    assert_eq!(c.cmd("XYZZY").await.code, 500);
    assert_eq!(c.cmd("STARTTLS").await.code, 500, "not offered");
    assert_eq!(c.cmd("NOOP").await.code, 250);
    assert_eq!(c.cmd("MAIL FROM:<a@client.lab>").await.code, 250);
    assert_eq!(c.cmd("MAIL FROM:<a@client.lab>").await.code, 503);
    assert_eq!(c.cmd("DATA").await.code, 503);
    assert_eq!(c.cmd("RCPT TO:<b@example.lab>").await.code, 250);
    // RFC 3030 chunks: the bytes follow the command without a reply between.
    c.io.get_mut()
        .write_all(b"BDAT 5\r\nhelloBDAT 0 LAST\r\n")
        .await
        .unwrap();
    assert_eq!(c.reply().await.code, 250);
    assert_eq!(c.reply().await.code, 250);
    assert_eq!(h.messages()[0].data, b"hello");
    assert_eq!(c.cmd("QUIT").await.code, 221);
    c.assert_closed().await;
}

#[tokio::test]
async fn starttls_verifies_against_the_lab_ca() {
    let ca = LabCa::new().unwrap();
    let cert = ca.issue(&["mx.example.lab"]).unwrap();
    let h = host(HostScript::new("mx.example.lab").starttls(StartTls::Handshake(cert))).await;
    let mut c = starttls(h.addr(), trusting(&ca))
        .await
        .expect("handshake with a trusted certificate");
    // RFC 3207 §4.2: after TLS the client starts over, and STARTTLS is gone.
    assert_eq!(c.cmd("MAIL FROM:<a@client.lab>").await.code, 503);
    let ehlo = c.cmd("EHLO client.lab").await;
    assert!(!ehlo.lines.contains(&"STARTTLS".to_string()));
    assert_eq!(c.cmd("STARTTLS").await.code, 503);
    c.cmd("MAIL FROM:<a@client.lab>").await;
    c.cmd("RCPT TO:<b@example.lab>").await;
    c.cmd("DATA").await;
    c.send("secret").await;
    assert_eq!(c.cmd(".").await.code, 250);
    assert_eq!(c.cmd("QUIT").await.code, 221);
    assert!(h.messages()[0].tls);
    let tls_flags: Vec<(String, bool)> = h
        .transcript()
        .into_iter()
        .map(|e| (e.command, e.tls))
        .collect();
    assert_eq!(
        tls_flags[..2],
        [
            ("EHLO client.lab".to_string(), false),
            ("STARTTLS".to_string(), false)
        ]
    );
    assert_eq!(tls_flags[2], ("MAIL FROM:<a@client.lab>".to_string(), true));
}

#[tokio::test]
async fn commands_pipelined_after_starttls_are_dropped() {
    // RFC 3207 §5 and the STARTTLS command injection flaw (CVE-2011-0411).
    let ca = LabCa::new().unwrap();
    let h = host(
        HostScript::new("mx.example.lab")
            .starttls(StartTls::Handshake(ca.issue(&["mx.example.lab"]).unwrap())),
    )
    .await;
    let mut c = Client::connect(h.addr()).await;
    c.reply().await;
    c.cmd("EHLO client.lab").await;
    c.io.get_mut()
        .write_all(b"STARTTLS\r\nRSET injected\r\n")
        .await
        .unwrap();
    assert_eq!(c.reply().await.code, 220);
    // One write, one segment on loopback: the host read both lines at once
    // and must drop the second rather than run it as if sent over TLS.
    let mut c = c.tls(trusting(&ca), "mx.example.lab").await.unwrap();
    assert_eq!(c.cmd("NOOP").await.code, 250);
    assert!(
        !h.commands().iter().any(|c| c.contains("injected")),
        "{:?}",
        h.commands()
    );
}

#[tokio::test]
async fn untrusted_certificates_fail_verification_but_not_the_handshake() {
    let ca = LabCa::new().unwrap();
    let other_ca = LabCa::new().unwrap();
    let unknown_issuer = |e: &CertificateError| matches!(e, CertificateError::UnknownIssuer);
    let expired = |e: &CertificateError| {
        matches!(
            e,
            CertificateError::Expired | CertificateError::ExpiredContext { .. }
        )
    };
    let not_yet = |e: &CertificateError| {
        matches!(
            e,
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. }
        )
    };
    let wrong_name = |e: &CertificateError| {
        matches!(
            e,
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
        )
    };
    type Expect = fn(&CertificateError) -> bool;
    let cases: [(LabCert, &str, Expect); 5] = [
        (
            LabCert::self_signed(&["mx.example.lab"], Validity::Current).unwrap(),
            "self-signed",
            unknown_issuer,
        ),
        (
            ca.issue_with(&["mx.example.lab"], Validity::Expired)
                .unwrap(),
            "expired",
            expired,
        ),
        (
            ca.issue_with(&["mx.example.lab"], Validity::NotYetValid)
                .unwrap(),
            "not yet valid",
            not_yet,
        ),
        (
            other_ca.issue(&["mx.example.lab"]).unwrap(),
            "another CA",
            unknown_issuer,
        ),
        (
            ca.issue(&["other.example.lab"]).unwrap(),
            "wrong name",
            wrong_name,
        ),
    ];
    for (cert, what, expect) in cases {
        let h = host(HostScript::new("mx.example.lab").starttls(StartTls::Handshake(cert))).await;
        let err = match starttls(h.addr(), trusting(&ca)).await {
            Ok(_) => panic!("{what}: a verifying client accepted it"),
            Err(err) => err,
        };
        let cause = rustls_error(&err).unwrap_or_else(|| panic!("{what}: not a TLS error: {err}"));
        let ok = matches!(cause, rustls::Error::InvalidCertificate(e) if expect(e));
        assert!(ok, "{what}: unexpected error {cause:?}");
        // The same host completes a handshake with a client that does not
        // verify: the fault is the certificate, not TLS.
        let mut c = starttls(h.addr(), not_verifying())
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(c.cmd("EHLO client.lab").await.code, 250);
    }
}

#[tokio::test]
async fn starttls_failures_can_be_scripted() {
    for mode in [StartTls::GarbageAfterReady, StartTls::CloseAfterReady] {
        let h = host(HostScript::new("mx.example.lab").starttls(mode.clone())).await;
        let err = match starttls(h.addr(), not_verifying()).await {
            Ok(_) => panic!("{mode:?}: handshake succeeded"),
            Err(err) => err,
        };
        assert!(
            !matches!(
                rustls_error(&err),
                Some(rustls::Error::InvalidCertificate(_))
            ),
            "{mode:?}: the handshake itself must fail, got {err}"
        );
    }
    let refused =
        host(HostScript::new("mx.example.lab").starttls(StartTls::Refuse(reply::TLS_UNAVAILABLE)))
            .await;
    let mut c = Client::connect(refused.addr()).await;
    c.reply().await;
    assert!(
        c.cmd("EHLO client.lab")
            .await
            .lines
            .contains(&"STARTTLS".to_string())
    );
    assert_eq!(
        c.cmd("STARTTLS").await,
        Answer {
            code: 454,
            lines: vec!["4.7.0 TLS not available".into()]
        }
    );
    assert_eq!(c.cmd("NOOP").await.code, 250, "still talking in plain text");
}

#[tokio::test]
async fn silent_host_never_answers() {
    let h = host(HostScript::new("mx.example.lab").behaviour(Behaviour::Silent)).await;
    let mut tcp = TcpStream::connect(h.addr()).await.unwrap();
    tcp.write_all(b"EHLO client.lab\r\n").await.unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_millis(300), tcp.read(&mut buf)).await;
    assert!(read.is_err(), "a silent host sent {read:?}");
    // It did accept: the connection was held open, not refused.
    assert_eq!(h.connections(), 1);
    assert!(h.transcript().is_empty());
}

#[tokio::test]
async fn refusing_host_refuses_connections() {
    let h = host(HostScript::new("mx.example.lab").behaviour(Behaviour::Refuse)).await;
    assert_ne!(h.addr().port(), 0);
    let err = TcpStream::connect(h.addr())
        .await
        .expect_err("nothing listens");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
    // The port stays reserved: no other host can take it while this lives.
    let taken = LabSmtp::start(h.addr().ip(), h.addr().port(), HostScript::new("x")).await;
    assert_eq!(
        taken.map(|_| ()).unwrap_err().kind(),
        io::ErrorKind::AddrInUse
    );
}

#[tokio::test]
async fn busy_host_says_421_and_closes() {
    let h = host(HostScript::new("mx.example.lab").behaviour(Behaviour::Busy)).await;
    let mut c = Client::connect(h.addr()).await;
    assert_eq!(
        c.reply().await,
        Answer {
            code: 421,
            lines: vec!["4.3.2 too busy".into()]
        }
    );
    c.assert_closed().await;

    let h = host(HostScript::new("mx.example.lab").behaviour(Behaviour::CloseAfterBanner)).await;
    let mut c = Client::connect(h.addr()).await;
    assert_eq!(c.reply().await.code, 220);
    c.assert_closed().await;
}

#[tokio::test]
async fn a_set_shares_one_port_across_addresses() {
    let set = LabSmtpSet::start([
        (
            ip("127.0.3.1"),
            HostScript::new("mx1.example.lab").rcpt("*@example.lab", (550, "5.1.1 no such user")),
        ),
        (ip("127.0.3.2"), HostScript::new("mx2.example.lab")),
        (
            ip("127.0.3.3"),
            HostScript::new("mx3.example.lab").behaviour(Behaviour::Refuse),
        ),
    ])
    .await
    .unwrap();
    let port = set.port();
    assert_ne!(port, 0);
    assert!(set.hosts().iter().all(|h| h.addr().port() == port));
    // The way `check --smtp-port` probes: each MX address on the one port.
    for (addr, name, rcpt) in [
        ("127.0.3.1", "mx1.example.lab", 550),
        ("127.0.3.2", "mx2.example.lab", 250),
    ] {
        let mut c = Client::connect(SocketAddr::new(ip(addr), port)).await;
        assert_eq!(c.reply().await.text(), format!("{name} ESMTP lab"));
        c.cmd("EHLO client.lab").await;
        c.cmd("MAIL FROM:<>").await;
        assert_eq!(
            c.cmd("RCPT TO:<nobody@example.lab>").await.code,
            rcpt,
            "{name}"
        );
    }
    let refused = TcpStream::connect(SocketAddr::new(ip("127.0.3.3"), port)).await;
    assert_eq!(
        refused.unwrap_err().kind(),
        io::ErrorKind::ConnectionRefused
    );
    assert_eq!(set.host(ip("127.0.3.2")).unwrap().name(), "mx2.example.lab");
    assert_eq!(set.host(ip("127.0.3.1")).unwrap().connections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sets_started_at_once_never_collide() {
    // Four sets on the same three addresses, started concurrently: each must
    // end up on a port of its own.
    let mut starts = tokio::task::JoinSet::new();
    for i in 1..=4 {
        starts.spawn(LabSmtpSet::start((1..=3).map(move |j| {
            (
                ip(&format!("127.0.5.{j}")),
                HostScript::new(format!("s{i}h{j}.lab")),
            )
        })));
    }
    let mut sets = Vec::new();
    while let Some(set) = starts.join_next().await {
        sets.push(set.unwrap().unwrap());
    }
    let mut ports: Vec<u16> = sets.iter().map(LabSmtpSet::port).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), 4, "each set has a port of its own");
    for set in &sets {
        for h in set.hosts() {
            let mut c = Client::connect(h.addr()).await;
            assert_eq!(c.reply().await.text(), format!("{} ESMTP lab", h.name()));
        }
    }
}

#[tokio::test]
async fn many_clients_and_hosts_at_once() {
    let mut hosts = Vec::new();
    for i in 1..=6 {
        hosts.push(
            LabSmtp::start(
                ip(&format!("127.0.4.{i}")),
                0,
                HostScript::new(format!("h{i}.lab")),
            )
            .await
            .unwrap(),
        );
    }
    let mut clients = tokio::task::JoinSet::new();
    for h in &hosts {
        for n in 0..4 {
            let addr = h.addr();
            clients.spawn(async move {
                let mut c = Client::connect(addr).await;
                c.reply().await;
                c.cmd("EHLO client.lab").await;
                c.cmd(&format!("MAIL FROM:<c{n}@client.lab>")).await;
                c.cmd("RCPT TO:<x@example.lab>").await;
                c.cmd("DATA").await;
                c.send(&format!("message {n}")).await;
                c.cmd(".").await.code
            });
        }
    }
    while let Some(code) = clients.join_next().await {
        assert_eq!(code.unwrap(), 250);
    }
    for h in &hosts {
        let mut senders: Vec<String> = h.messages().into_iter().map(|m| m.mail_from).collect();
        senders.sort();
        assert_eq!(
            senders,
            [
                "c0@client.lab",
                "c1@client.lab",
                "c2@client.lab",
                "c3@client.lab"
            ]
        );
        assert_eq!(h.connections(), 4);
    }
}

#[tokio::test]
async fn dropping_the_handle_stops_the_host() {
    let h = host(HostScript::new("mx.example.lab")).await;
    let addr = h.addr();
    let mut c = Client::connect(addr).await;
    c.reply().await;
    drop(h);
    // The open session ends with the host…
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(WAIT, c.io.read_to_end(&mut rest)).await;
    assert!(
        ended.is_ok(),
        "session still open after the host was dropped"
    );
    // …and nothing listens any more.
    let err = TcpStream::connect(addr).await.expect_err("host stopped");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
}

#[tokio::test]
async fn only_loopback_addresses_are_served() {
    let err = LabSmtp::start(ip("192.0.2.1"), 0, HostScript::new("x"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
}
