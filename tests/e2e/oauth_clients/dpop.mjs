// DPoP (RFC 9449) end to end with oauth4webapi, unmodified (only its documented
// allowInsecureRequests option: the test servers are plain http on loopback), against the
// Tollgate auth server and a real Envoy gateway with the Tollgate filter.
//
// Input: env ISSUER, CLIENT_ID (a public client), REDIRECT, API (a gateway URL). The
// authorization step needs a user: this script prints "AUTHORIZE <url>" and reads one line
// "CALLBACK <url>" from stdin (test_oauth_clients.py logs in as a browser would). Output:
// one JSON line of results; exit code 1 on any failure.
//
// The negative cases use the library's own proofs (DPoPHandle.addProof, the call
// protectedResourceRequest makes), changed only through its documented hooks: a client
// clock skew (a stale iat), modifyAssertion (no ath), another key pair.
import * as oauth from 'oauth4webapi'
import readline from 'node:readline'

const insecure = { [oauth.allowInsecureRequests]: true }
const issuer = new URL(process.env.ISSUER)
const api = new URL(process.env.API)
const redirect = process.env.REDIRECT
const client = { client_id: process.env.CLIENT_ID }
const auth = oauth.None()
const out = {}

const as = await oauth
  .discoveryRequest(issuer, { algorithm: 'oauth2', ...insecure })
  .then((r) => oauth.processDiscoveryResponse(issuer, r))
out.dpop_signing_alg_values_supported = as.dpop_signing_alg_values_supported

const keyPair = await oauth.generateKeyPair('ES256')
const DPoP = oauth.DPoP(client, keyPair)

// Authorization code + PKCE, the code bound to the key (dpop_jkt, RFC 9449 §10).
const verifier = oauth.generateRandomCodeVerifier()
const state = oauth.generateRandomState()
const authorize = new URL(as.authorization_endpoint)
for (const [k, v] of Object.entries({
  client_id: client.client_id,
  redirect_uri: redirect,
  response_type: 'code',
  scope: 'api:read',
  state,
  code_challenge: await oauth.calculatePKCECodeChallenge(verifier),
  code_challenge_method: 'S256',
  dpop_jkt: await DPoP.calculateThumbprint(),
})) {
  authorize.searchParams.set(k, v)
}
console.log(`AUTHORIZE ${authorize.href}`)
const rl = readline.createInterface({ input: process.stdin })
const line = await new Promise((resolve) => rl.once('line', resolve))
rl.close()
const callback = new URL(line.replace(/^CALLBACK /, ''))
const params = oauth.validateAuthResponse(as, client, callback, state)

let tr = await oauth.authorizationCodeGrantRequest(as, client, auth, params, redirect, verifier, { DPoP, ...insecure })
const tokens = await oauth.processAuthorizationCodeResponse(as, client, tr)
out.token_type = tokens.token_type
out.has_refresh_token = typeof tokens.refresh_token === 'string'

// Through the gateway with the library's proofs.
const call = async (token) => {
  const r = await oauth.protectedResourceRequest(token, 'GET', api, new Headers(), null, { DPoP, ...insecure })
  return { status: r.status, sub: (await r.json()).headers['x-tollgate-sub'] }
}
out.call = await call(tokens.access_token)

// Refresh: a public client's refresh token is bound to the key, so the library's proof is
// what makes it work.
tr = await oauth.refreshTokenGrantRequest(as, client, auth, tokens.refresh_token, { DPoP, ...insecure })
const refreshed = await oauth.processRefreshTokenResponse(as, client, tr)
out.refreshed_token_type = refreshed.token_type
out.call_after_refresh = await call(refreshed.access_token)
const token = refreshed.access_token

// What the gateway answers to a request made by hand from a library proof.
const send = async (method, url, scheme, proof) => {
  const headers = { authorization: `${scheme} ${token}` }
  if (proof) headers.dpop = proof
  const r = await fetch(url, { method, headers })
  return { status: r.status, www_authenticate: r.headers.get('www-authenticate') }
}
const proofBy = async (handle, method, url, accessToken = token) => {
  const h = new Headers()
  await handle.addProof(url, h, method, accessToken)
  return h.get('dpop')
}

const fresh = await proofBy(DPoP, 'GET', api)
out.first_use = await send('GET', api, 'DPoP', fresh)
out.replayed = await send('GET', api, 'DPoP', fresh)
const otherUrl = new URL(api)
otherUrl.pathname = otherUrl.pathname + '-other'
out.other_url = await send('GET', otherUrl, 'DPoP', await proofBy(DPoP, 'GET', api))
out.other_method = await send('POST', api, 'DPoP', await proofBy(DPoP, 'GET', api))
const stale = oauth.DPoP({ ...client, [oauth.clockSkew]: -3600 }, keyPair)
out.stale_iat = await send('GET', api, 'DPoP', await proofBy(stale, 'GET', api))
const otherKey = oauth.DPoP(client, await oauth.generateKeyPair('ES256'))
out.wrong_key = await send('GET', api, 'DPoP', await proofBy(otherKey, 'GET', api))
const noAth = oauth.DPoP(client, keyPair, { [oauth.modifyAssertion]: (_h, p) => { delete p.ath } })
out.missing_ath = await send('GET', api, 'DPoP', await proofBy(noAth, 'GET', api))
out.bearer_downgrade = await send('GET', api, 'Bearer', null)

console.log(JSON.stringify(out))
