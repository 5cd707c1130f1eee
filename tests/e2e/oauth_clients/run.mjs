// Drive the Tollgate auth server with oauth4webapi, unmodified (only its documented
// allowInsecureRequests option, because the test server is plain http on loopback).
// Input: env ISSUER, CLIENT_ID, CLIENT_SECRET, AUDIENCE. Output: one JSON line of results;
// exit code 1 on any failure.
import * as oauth from 'oauth4webapi'

const insecure = { [oauth.allowInsecureRequests]: true }
const issuer = new URL(process.env.ISSUER)
const audience = process.env.AUDIENCE
const client = { client_id: process.env.CLIENT_ID }
const auth = oauth.ClientSecretBasic(process.env.CLIENT_SECRET)

const out = {}

// RFC 8414 discovery (oauth4webapi checks the issuer identifier strictly).
const as = await oauth
  .discoveryRequest(issuer, { algorithm: 'oauth2', ...insecure })
  .then((r) => oauth.processDiscoveryResponse(issuer, r))
out.issuer = as.issuer
out.authorization_endpoint = as.authorization_endpoint
out.code_challenge_methods_supported = as.code_challenge_methods_supported

// client_credentials.
const tr = await oauth.clientCredentialsGrantRequest(as, client, auth, { scope: 'api:read' }, insecure)
const tokens = await oauth.processClientCredentialsResponse(as, client, tr)
out.token_type = tokens.token_type
out.scope = tokens.scope

// RFC 9068 validation of our access token, against our JWKS.
const req = (t) => new Request('https://api.example/resource', { headers: { authorization: `Bearer ${t}` } })
const claims = await oauth.validateJwtAccessToken(as, req(tokens.access_token), audience, insecure)
out.claims = { sub: claims.sub, client_id: claims.client_id, aud: claims.aud, scope: claims.scope, iss: claims.iss }

// A token with a flipped signature byte must be refused.
const parts = tokens.access_token.split('.')
const sig = parts[2]
const flipped = (sig[5] === 'A' ? 'B' : 'A')
parts[2] = sig.slice(0, 5) + flipped + sig.slice(6)
try {
  await oauth.validateJwtAccessToken(as, req(parts.join('.')), audience, insecure)
  out.tampered_rejected = false
} catch (e) {
  out.tampered_rejected = true
}
// ... and so must a token for another audience.
try {
  await oauth.validateJwtAccessToken(as, req(tokens.access_token), 'https://not-this-audience', insecure)
  out.wrong_audience_rejected = false
} catch (e) {
  out.wrong_audience_rejected = true
}

// Introspection and revocation through the library.
const ir = await oauth.introspectionRequest(as, client, auth, tokens.access_token, insecure)
out.introspection_active = (await oauth.processIntrospectionResponse(as, client, ir)).active
const rr = await oauth.revocationRequest(as, client, auth, tokens.access_token, insecure)
await oauth.processRevocationResponse(rr)
const ir2 = await oauth.introspectionRequest(as, client, auth, tokens.access_token, insecure)
out.introspection_after_revoke = (await oauth.processIntrospectionResponse(as, client, ir2)).active

console.log(JSON.stringify(out))
