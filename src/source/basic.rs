//! `basic`: a username and password (robot account, deploy token, personal
//! access token) kept in a Secret.

use secrecy::ExposeSecret;

use super::reader::take_key;
use super::{MintFuture, Minted, SourceContext, TokenSource};
use crate::api::BasicSource;

pub struct Basic {
    spec: BasicSource,
    cx: SourceContext,
}

impl Basic {
    pub fn new(spec: BasicSource, cx: SourceContext) -> Self {
        Self { spec, cx }
    }
}

impl TokenSource for Basic {
    fn mint(&self) -> MintFuture<'_> {
        Box::pin(async move {
            let r = &self.spec.secret_ref;
            let mut data = self.cx.secrets.data(&r.name).await?;
            let user = take_key(&mut data, &r.name, r.username_key.as_deref().unwrap_or("username"))?;
            let password = take_key(&mut data, &r.name, r.password_key.as_deref().unwrap_or("password"))?;
            // A username is not secret material; it is shown in the Secret as is.
            let minted = Minted::for_all(&self.spec.registries, user.expose_secret(), &password, (self.cx.now)(), None);
            if self.spec.verify != Some(false) {
                let settings = crate::api::HttpClientSettings { tls: self.spec.tls.clone(), ..Default::default() };
                let client = super::httpclient::build(&settings, &self.cx.secrets, &self.cx.net).await?;
                let allow_http = self.spec.allow_insecure_http == Some(true);
                for entry in &minted.entries {
                    super::login::check(&client, entry, allow_http).await?;
                }
            }
            Ok(minted)
        })
    }
}
