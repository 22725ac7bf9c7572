//! Private Postfix instances for the interop tests (Debian's `postfix`
//! package; see `/work/shared/NOTES-interop.md` for what was learnt about
//! it).
//!
//! Each instance has its own configuration directory, queue, data
//! directory, mailboxes and log under one base directory, and listens on one
//! address and port of 127.0.0.0/8. Everything is hermetic: no DNS from
//! Postfix, IP-literal next hops, an `error:` default transport, so no
//! instance can send mail off the machine. Needs root.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mxguard_lab::LabCa;

use super::{Scratch, describe, path_str, run, send_signal, set_mode, smtp_banner, wait_gone};

/// How long a Postfix instance gets to answer with its banner.
pub const POSTFIX_READY: Duration = Duration::from_secs(20);
/// How long `postfix stop` gets before the master is killed.
pub const POSTFIX_STOP: Duration = Duration::from_secs(10);
/// Fresh ports tried when Postfix cannot bind the one picked.
pub const PORT_ATTEMPTS: usize = 5;
/// The uid and gid that own the virtual mailboxes (`nobody`).
pub const VMAIL_ID: u32 = 65534;

/// What a Postfix instance is for.
pub enum Role {
    /// Final destination for these domains, with these mailboxes at each of
    /// them; unknown users get `550 5.1.1` at RCPT.
    Strict {
        domains: Vec<&'static str>,
        users: Vec<&'static str>,
    },
    /// Relays these domains to `primary` (on the instance's own port) with
    /// no recipient list.
    CarelessBackup {
        domains: Vec<&'static str>,
        primary: Ipv4Addr,
    },
    /// An outbound MTA: takes mail from 127.0.0.0/8 for any domain and
    /// hands all of it to `relayhost` (an IP literal, so no DNS); no
    /// domain is delivered locally.
    Sender { relayhost: SocketAddr },
}

/// `master.cf`: the services a small MTA needs, none chrooted (the queue
/// directory holds no copy of /etc), smtpd on `port` of `inet_interfaces`.
pub fn master_cf(port: u16) -> String {
    format!(
        "# mxguard interop: generated\n\
         {port:<9} inet  n       -       n       -       -       smtpd\n\
         pickup    unix  n       -       n       60      1       pickup\n\
         cleanup   unix  n       -       n       -       0       cleanup\n\
         qmgr      unix  n       -       n       300     1       qmgr\n\
         tlsmgr    unix  -       -       n       1000?   1       tlsmgr\n\
         rewrite   unix  -       -       n       -       -       trivial-rewrite\n\
         bounce    unix  -       -       n       -       0       bounce\n\
         defer     unix  -       -       n       -       0       bounce\n\
         trace     unix  -       -       n       -       0       bounce\n\
         verify    unix  -       -       n       -       1       verify\n\
         flush     unix  n       -       n       1000?   0       flush\n\
         proxymap  unix  -       -       n       -       -       proxymap\n\
         proxywrite unix -       -       n       -       1       proxymap\n\
         smtp      unix  -       -       n       -       -       smtp\n\
         relay     unix  -       -       n       -       -       smtp\n\
         showq     unix  n       -       n       -       -       showq\n\
         error     unix  -       -       n       -       -       error\n\
         retry     unix  -       -       n       -       -       error\n\
         discard   unix  -       -       n       -       -       discard\n\
         local     unix  -       n       n       -       -       local\n\
         virtual   unix  -       n       n       -       -       virtual\n\
         anvil     unix  -       -       n       -       1       anvil\n\
         scache    unix  -       -       n       -       1       scache\n\
         postlog   unix-dgram n  -       n       -       1       postlogd\n"
    )
}

/// One Postfix instance's files, all under `base`.
pub struct Layout {
    pub name: &'static str,
    pub base: PathBuf,
    pub conf: PathBuf,
    pub queue: PathBuf,
    pub data: PathBuf,
    /// `virtual_mailbox_base` of a strict instance.
    pub mail: PathBuf,
    pub maillog: PathBuf,
}

impl Layout {
    /// The files of instance `name`, in `dir/name`. The scratch directory
    /// must be walkable by Postfix's unprivileged processes (mode 0755).
    pub fn new(dir: &Scratch, name: &'static str) -> Layout {
        let base = dir.file(name);
        Layout {
            name,
            conf: base.join("conf"),
            queue: base.join("queue"),
            data: base.join("data"),
            mail: base.join("mail"),
            maillog: base.join("maillog"),
            base,
        }
    }

    /// Write `main.cf`, `master.cf`, the lookup tables and, with `tls`, a
    /// certificate for `hostname` from that CA (then STARTTLS is offered).
    pub fn write(&self, role: &Role, hostname: &str, ip: Ipv4Addr, port: u16, tls: Option<&LabCa>) {
        for d in [&self.base, &self.conf, &self.queue] {
            fs::create_dir_all(d).unwrap_or_else(|e| panic!("creating {}: {e}", d.display()));
            set_mode(d, 0o755);
        }
        // data_directory is created by `postfix check`, owned by postfix.
        let tls_cf = match tls {
            Some(ca) => {
                let cert = ca.issue(&[hostname]).expect("issuing a lab certificate");
                let key_file = self.conf.join("key.pem");
                let chain_file = self.conf.join("chain.pem");
                fs::write(&key_file, cert.key_pem()).expect("writing key.pem");
                set_mode(&key_file, 0o600);
                fs::write(&chain_file, cert.cert_pem()).expect("writing chain.pem");
                format!(
                    "smtpd_tls_security_level = may\n\
                     smtpd_tls_chain_files = {key}, {chain}\n\
                     smtpd_tls_loglevel = 1\n",
                    key = key_file.display(),
                    chain = chain_file.display(),
                )
            }
            None => "smtpd_tls_security_level = none\n".to_owned(),
        };

        // Who may relay through the instance, where mail with no transport
        // entry goes: nowhere, except for a sender.
        let (mynetworks, relayhost, default_transport) = match role {
            Role::Sender { relayhost } => (
                "127.0.0.0/8".to_owned(),
                format!("[{}]:{}", relayhost.ip(), relayhost.port()),
                "smtp".to_owned(),
            ),
            Role::Strict { .. } | Role::CarelessBackup { .. } => (
                "192.0.2.1/32".to_owned(),
                String::new(),
                "error:5.7.1 mxguard interop: no outbound mail".to_owned(),
            ),
        };
        let main = format!(
            "# mxguard interop: generated; instance {name}\n\
             compatibility_level = 3.6\n\
             queue_directory = {queue}\n\
             data_directory = {data}\n\
             maillog_file = {maillog}\n\
             maillog_file_prefixes = {base}\n\
             syslog_name = mxguard-interop-{name}\n\
             myhostname = {hostname}\n\
             mydomain = interop.test\n\
             myorigin = $myhostname\n\
             mydestination =\n\
             inet_interfaces = {ip}\n\
             inet_protocols = ipv4\n\
             # A sender relays for 127.0.0.0/8; for the others, not the\n\
             # client: mxguard and swaks arrive from 127.0.0.1 or an alias.\n\
             mynetworks = {mynetworks}\n\
             smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination\n\
             smtpd_banner = $myhostname ESMTP\n\
             # Hermetic: no DNS, no delivery off this machine (a sender's\n\
             # relayhost is an IP literal on it).\n\
             smtpd_peername_lookup = no\n\
             smtp_dns_support_level = disabled\n\
             relayhost = {relayhost}\n\
             default_transport = {default_transport}\n\
             local_transport = error:5.1.1 mxguard interop: no local delivery\n\
             alias_maps =\n\
             alias_database =\n\
             local_recipient_maps =\n\
             biff = no\n\
             {tls_cf}\
             smtp_tls_security_level = none\n",
            name = self.name,
            queue = self.queue.display(),
            data = self.data.display(),
            maillog = self.maillog.display(),
            base = self.base.display(),
        );
        let role_cf = match role {
            Role::Strict { domains, users } => {
                fs::create_dir_all(&self.mail).expect("creating the mailbox base");
                std::os::unix::fs::chown(&self.mail, Some(VMAIL_ID), Some(VMAIL_ID))
                    .expect("chown of the mailbox base");
                let mut table = String::new();
                for domain in domains {
                    for user in users {
                        table.push_str(&format!("{user}@{domain} {domain}/{user}/\n"));
                    }
                }
                let vmailbox = self.conf.join("vmailbox");
                fs::write(&vmailbox, table).expect("writing vmailbox");
                format!(
                    "# Final destination; unknown users get 550 5.1.1 at RCPT.\n\
                     virtual_mailbox_domains = {domains}\n\
                     virtual_mailbox_maps = texthash:{vmailbox}\n\
                     virtual_mailbox_base = {mail}\n\
                     virtual_uid_maps = static:{VMAIL_ID}\n\
                     virtual_gid_maps = static:{VMAIL_ID}\n",
                    domains = domains.join(" "),
                    vmailbox = vmailbox.display(),
                    mail = self.mail.display(),
                )
            }
            Role::CarelessBackup { domains, primary } => {
                let mut table = String::new();
                for domain in domains {
                    table.push_str(&format!("{domain} relay:[{primary}]:{port}\n"));
                }
                let transport = self.conf.join("transport");
                fs::write(&transport, table).expect("writing transport");
                format!(
                    "# A backup MX with no recipient list: any user is accepted.\n\
                     relay_domains = {domains}\n\
                     relay_recipient_maps =\n\
                     transport_maps = texthash:{transport}\n",
                    domains = domains.join(" "),
                    transport = transport.display(),
                )
            }
            Role::Sender { .. } => "# A sender: everything goes to the relayhost.\n".to_owned(),
        };
        fs::write(self.conf.join("main.cf"), main + &role_cf).expect("writing main.cf");
        fs::write(self.conf.join("master.cf"), master_cf(port)).expect("writing master.cf");
    }
}

/// A running Postfix instance; stopped (`postfix stop`, then `abort`, then
/// SIGKILL to the master) when dropped, its maillog printed if the test is
/// failing.
pub struct Postfix {
    postfix: PathBuf,
    pub layout: Layout,
    pub addr: SocketAddr,
    master_pid: Option<u32>,
    stopped: bool,
}

/// Why an instance did not come up.
pub enum StartError {
    /// Another process holds the port: pick another.
    PortTaken,
    Other(String),
}

impl Postfix {
    fn conf_arg(&self) -> &str {
        path_str(&self.layout.conf)
    }

    /// The instance's log so far.
    pub fn maillog(&self) -> String {
        fs::read_to_string(&self.layout.maillog).unwrap_or_default()
    }

    fn read_master_pid(&self) -> Option<u32> {
        fs::read_to_string(self.layout.queue.join("pid/master.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// `postfix check`, `postfix start`, then wait for the banner on `addr`
    /// (the address and port `layout` was written for).
    pub fn start(postfix: &Path, layout: Layout, addr: SocketAddr) -> Result<Postfix, StartError> {
        let mut server = Postfix {
            postfix: postfix.to_path_buf(),
            layout,
            addr,
            master_pid: None,
            stopped: false,
        };
        server.boot()?;
        Ok(server)
    }

    /// Start a stopped instance again, same files, same address, and wait
    /// for its banner; panics if it does not come up.
    pub fn restart(&mut self) {
        assert!(
            self.stopped,
            "Postfix {} is running: stop it before restarting it",
            self.layout.name
        );
        self.stopped = false;
        match self.boot() {
            Ok(()) => {}
            Err(StartError::PortTaken) => panic!(
                "Postfix {}: its port {} was taken while it was stopped",
                self.layout.name, self.addr
            ),
            Err(StartError::Other(why)) => {
                panic!("restarting Postfix {}: {why}", self.layout.name)
            }
        }
    }

    /// `postfix check`, `postfix start`, wait for the banner.
    fn boot(&mut self) -> Result<(), StartError> {
        let postfix = self.postfix.clone();
        let conf = self.conf_arg().to_owned();
        // Only what this start logs says whether the port was taken: an
        // earlier attempt may have left its complaint in the same file.
        let log_from = self.maillog().len();
        let port_taken = |s: &Postfix| {
            s.maillog()
                .get(log_from..)
                .is_some_and(|l| l.contains("Address already in use"))
        };
        let check = run(&postfix, &["-c", &conf, "check"]);
        if !check.status.success() {
            return Err(StartError::Other(describe(
                &postfix,
                &["-c", &conf, "check"],
                &check,
            )));
        }
        let start = run(&postfix, &["-c", &conf, "start"]);
        self.master_pid = self.read_master_pid();
        if !start.status.success() {
            if port_taken(self) {
                return Err(StartError::PortTaken);
            }
            return Err(StartError::Other(format!(
                "{}\nmaillog:\n{}",
                describe(&postfix, &["-c", &conf, "start"], &start),
                self.maillog()
            )));
        }
        let deadline = Instant::now() + POSTFIX_READY;
        loop {
            if smtp_banner(self.addr).is_some() {
                // Read again: a restart may have found the last run's file.
                self.master_pid = self.read_master_pid().or(self.master_pid);
                return Ok(());
            }
            if port_taken(self) {
                return Err(StartError::PortTaken);
            }
            if Instant::now() > deadline {
                return Err(StartError::Other(format!(
                    "Postfix {} on {} gave no banner within {POSTFIX_READY:?}; maillog:\n{}",
                    self.layout.name,
                    self.addr,
                    self.maillog()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// One instance called `name` in `dir` with `role`, on `ip` and a port
    /// free at the time of asking (another one if Postfix finds it taken).
    pub fn start_on_free_port(
        postfix: &Path,
        dir: &Scratch,
        name: &'static str,
        role: &Role,
        hostname: &str,
        ip: Ipv4Addr,
        tls: Option<&LabCa>,
    ) -> Postfix {
        Postfix::start_tuned(postfix, dir, name, role, hostname, ip, tls, "")
    }

    /// [`start_on_free_port`] with `extra` lines appended to `main.cf`
    /// (later settings win in Postfix).
    ///
    /// [`start_on_free_port`]: Postfix::start_on_free_port
    #[allow(clippy::too_many_arguments)]
    pub fn start_tuned(
        postfix: &Path,
        dir: &Scratch,
        name: &'static str,
        role: &Role,
        hostname: &str,
        ip: Ipv4Addr,
        tls: Option<&LabCa>,
        extra: &str,
    ) -> Postfix {
        for _ in 0..PORT_ATTEMPTS {
            let port = TcpListener::bind((ip, 0))
                .and_then(|l| l.local_addr())
                .unwrap_or_else(|e| panic!("finding a free port on {ip}: {e}"))
                .port();
            let layout = Layout::new(dir, name);
            layout.write(role, hostname, ip, port, tls);
            if !extra.is_empty() {
                let main_cf = layout.conf.join("main.cf");
                let mut text = fs::read_to_string(&main_cf).expect("reading main.cf");
                text.push_str("# The test's own settings\n");
                text.push_str(extra);
                fs::write(&main_cf, text).expect("writing main.cf");
            }
            match Postfix::start(postfix, layout, SocketAddr::from((ip, port))) {
                Ok(server) => return server,
                Err(StartError::PortTaken) => continue,
                Err(StartError::Other(why)) => panic!("starting Postfix {name}: {why}"),
            }
        }
        panic!("Postfix {name} could not bind a port on {ip} in {PORT_ATTEMPTS} attempts");
    }

    /// Stop the instance and wait for its master to exit; once stopped, it
    /// stays stopped (dropping it does nothing more) unless [`restart`]ed.
    ///
    /// [`restart`]: Postfix::restart
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let Some(pid) = self.master_pid.or_else(|| self.read_master_pid()) else {
            return;
        };
        let conf = self.conf_arg().to_owned();
        let _ = run(&self.postfix, &["-c", &conf, "stop"]);
        if wait_gone(pid, POSTFIX_STOP) {
            return;
        }
        let _ = run(&self.postfix, &["-c", &conf, "abort"]);
        if wait_gone(pid, Duration::from_secs(3)) {
            return;
        }
        eprintln!(
            "postfix fixture: Postfix {} master {pid} ignored stop and abort; killing it",
            self.layout.name
        );
        send_signal(pid, "KILL");
        wait_gone(pid, Duration::from_secs(3));
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!(
                "postfix fixture: Postfix {} ({}) maillog {}:\n{}",
                self.layout.name,
                self.addr,
                self.layout.maillog.display(),
                self.maillog()
            );
        }
    }
}
