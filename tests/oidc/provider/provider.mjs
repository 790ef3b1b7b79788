// A real OpenID Provider for the sign-in tests: the certified `oidc-provider` package, set up
// like ProConnect (authorization code, PKCE S256 required, nonce, signed ID tokens, discovery).
// The scopes' claims (siret, departement, groupes) come from the userinfo endpoint, as a signed
// JWT, as ProConnect sends them.
// Usage: node provider.mjs  with PORT, OIDC_CLIENTS (JSON list of {client_id, client_secret,
// redirect_uris}) and OIDC_ACCOUNTS (JSON object: account id -> claims). The development
// login form accepts any account id of OIDC_ACCOUNTS (the password is not checked).
import Provider from 'oidc-provider';

const port = Number(process.env.PORT);
const issuer = `http://127.0.0.1:${port}`;
const clients = JSON.parse(process.env.OIDC_CLIENTS);
const accounts = JSON.parse(process.env.OIDC_ACCOUNTS);

const provider = new Provider(issuer, {
  clients: clients.map((c) => ({
    ...c,
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
    id_token_signed_response_alg: 'RS256',
    userinfo_signed_response_alg: 'RS256', // like ProConnect: the userinfo answer is a signed JWT
  })),
  pkce: { required: () => true },
  scopes: ['openid', 'email', 'organisation'],
  claims: { openid: ['sub'], email: ['email'], organisation: ['siret', 'departement', 'groupes'] },
  // like ProConnect: the ID token holds sub (and nonce…), the scopes' claims come from userinfo
  conformIdTokenClaims: true,
  findAccount: async (ctx, id) => (accounts[id]
    ? { accountId: id, claims: async () => ({ sub: id, ...accounts[id] }) }
    : undefined),
  ttl: { AuthorizationCode: 60, IdToken: 300, AccessToken: 300, Interaction: 600, Session: 600, Grant: 600 },
  cookies: { keys: ['help-exchange-tests-only'] },
  features: { devInteractions: { enabled: true }, jwtUserinfo: { enabled: true } },
});
provider.on('server_error', (ctx, err) => console.error('server_error', err));
provider.listen(port, '127.0.0.1', () => console.log(`oidc-provider listening on ${issuer}`));
