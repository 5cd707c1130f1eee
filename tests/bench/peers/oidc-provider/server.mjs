// node `oidc-provider` (v9) configured as the peer of the Tollgate auth server in
// `make bench-authserver`: client_credentials grant, RFC 7662 introspection, ES256-signed
// JWT access tokens (RFC 9068, through Resource Indicators), all state in Redis.
//
// Environment:
//   PEER_LISTEN   host:port to listen on (loopback only), e.g. 127.0.0.1:9310
//   PEER_REDIS    redis://127.0.0.1:<port>/<db>   (required: the Redis adapter below)
//   PEER_WORKERS  number of node:cluster workers (default 1). With more than one worker
//                 every worker shares the same Redis and the same signing key (made once
//                 by the primary), so the cluster is state-correct.
//   PEER_CLIENT_ID / PEER_CLIENT_SECRET   the one static confidential client
//
// Two resource servers: `urn:tollgate:bench:jwt` gets ES256 JWT access tokens (the format
// compared with Tollgate's token endpoint), `urn:tollgate:bench:opaque` gets opaque tokens,
// because oidc-provider refuses to introspect JWTs (UnsupportedTokenType): opaque tokens
// are what its introspection endpoint serves.
import cluster from 'node:cluster';
import { generateKeyPairSync, randomUUID } from 'node:crypto';
import http from 'node:http';
import process from 'node:process';

import Redis from 'ioredis';
import Provider from 'oidc-provider';

const listen = process.env.PEER_LISTEN || '127.0.0.1:9310';
const [host, portText] = listen.split(':');
const port = Number(portText);
const workers = Math.max(1, Number(process.env.PEER_WORKERS || '1'));
const redisUrl = process.env.PEER_REDIS;
if (!redisUrl) {
  console.error('PEER_REDIS is required');
  process.exit(2);
}
if (host !== '127.0.0.1') {
  console.error('PEER_LISTEN must be on 127.0.0.1');
  process.exit(2);
}

export const JWT_RESOURCE = 'urn:tollgate:bench:jwt';
export const OPAQUE_RESOURCE = 'urn:tollgate:bench:opaque';

// ---------------------------------------------------------------- Redis adapter
// After the example adapter of oidc-provider (example/adapters/redis.js), using ioredis.
// Payloads are JSON strings under `<model>:<id>` with the model's TTL; grant members are
// tracked in a list so revokeByGrantId works; uid / userCode have secondary keys.
const grantable = new Set([
  'AccessToken', 'AuthorizationCode', 'RefreshToken', 'DeviceCode',
  'BackchannelAuthenticationRequest',
]);

function makeRedisAdapter(client) {
  const grantKeyFor = (id) => `grant:${id}`;
  const userCodeKeyFor = (userCode) => `userCode:${userCode}`;
  const uidKeyFor = (uid) => `uid:${uid}`;

  return class RedisAdapter {
    constructor(name) {
      this.name = name;
    }

    key(id) {
      return `${this.name}:${id}`;
    }

    async upsert(id, payload, expiresIn) {
      const key = this.key(id);
      const multi = client.multi();
      if (expiresIn) {
        multi.set(key, JSON.stringify(payload), 'EX', expiresIn);
      } else {
        multi.set(key, JSON.stringify(payload));
      }
      if (grantable.has(this.name) && payload.grantId) {
        const grantKey = grantKeyFor(payload.grantId);
        multi.rpush(grantKey, key);
        const ttl = await client.ttl(grantKey);
        if (expiresIn && expiresIn > ttl) multi.expire(grantKey, expiresIn);
      }
      if (payload.userCode) {
        const k = userCodeKeyFor(payload.userCode);
        if (expiresIn) multi.set(k, id, 'EX', expiresIn); else multi.set(k, id);
      }
      if (payload.uid) {
        const k = uidKeyFor(payload.uid);
        if (expiresIn) multi.set(k, id, 'EX', expiresIn); else multi.set(k, id);
      }
      await multi.exec();
    }

    async find(id) {
      const data = await client.get(this.key(id));
      return data ? JSON.parse(data) : undefined;
    }

    async findByUid(uid) {
      const id = await client.get(uidKeyFor(uid));
      return id ? this.find(id) : undefined;
    }

    async findByUserCode(userCode) {
      const id = await client.get(userCodeKeyFor(userCode));
      return id ? this.find(id) : undefined;
    }

    async destroy(id) {
      await client.del(this.key(id));
    }

    async revokeByGrantId(grantId) {
      const grantKey = grantKeyFor(grantId);
      const tokens = await client.lrange(grantKey, 0, -1);
      const multi = client.multi();
      tokens.forEach((token) => multi.del(token));
      multi.del(grantKey);
      await multi.exec();
    }

    async consume(id) {
      // WATCH/MULTI so a concurrent consume cannot be lost.
      const key = this.key(id);
      for (let attempt = 0; attempt < 5; attempt += 1) {
        await client.watch(key);
        const data = await client.get(key);
        if (!data) {
          await client.unwatch();
          return;
        }
        const payload = JSON.parse(data);
        payload.consumed = Math.floor(Date.now() / 1000);
        const result = await client.multi().set(key, JSON.stringify(payload), 'KEEPTTL').exec();
        if (result) return;
      }
      throw new Error('consume: too much contention');
    }
  };
}

// ---------------------------------------------------------------- provider
async function startWorker() {
  const jwk = JSON.parse(process.env.PEER_SIGNING_JWK);
  const redis = new Redis(redisUrl, { enableAutoPipelining: true, maxRetriesPerRequest: 2 });
  const issuer = `http://${listen}`;

  const provider = new Provider(issuer, {
    adapter: makeRedisAdapter(redis),
    clients: [{
      client_id: process.env.PEER_CLIENT_ID || 'bench-client',
      client_secret: process.env.PEER_CLIENT_SECRET || 'bench-secret-0123456789abcdef',
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: 'client_secret_basic',
      introspection_endpoint_auth_method: 'client_secret_basic',
      scope: 'api:read',
      // the only key in the keystore is ES256 (the default for ID tokens is RS256)
      id_token_signed_response_alg: 'ES256',
    }],
    jwks: { keys: [jwk] },
    cookies: { keys: [randomUUID()] },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      introspection: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => JWT_RESOURCE,
        useGrantedResource: () => true,
        getResourceServerInfo: (ctx, resourceIndicator) => {
          if (resourceIndicator === OPAQUE_RESOURCE) {
            return {
              scope: 'api:read', audience: OPAQUE_RESOURCE, accessTokenTTL: 3600,
              accessTokenFormat: 'opaque',
            };
          }
          if (resourceIndicator === JWT_RESOURCE) {
            return {
              scope: 'api:read', audience: JWT_RESOURCE, accessTokenTTL: 3600,
              accessTokenFormat: 'jwt', jwt: { sign: { alg: 'ES256' } },
            };
          }
          throw new Provider.errors.InvalidTarget();
        },
      },
    },
    scopes: ['api:read'],
  });
  provider.on('server_error', (ctx, err) => console.error('server_error', err));

  const server = http.createServer(provider.callback());
  server.keepAliveTimeout = 65_000;
  server.listen(port, host, () => {
    if (cluster.isPrimary || process.env.PEER_WORKERS === '1') {
      console.log(`oidc-provider listening on ${issuer}`);
    }
  });
  const stop = () => {
    server.close();
    redis.disconnect();
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

if (cluster.isPrimary) {
  const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const jwk = { ...privateKey.export({ format: 'jwk' }), alg: 'ES256', use: 'sig', kid: randomUUID() };
  process.env.PEER_SIGNING_JWK = JSON.stringify(jwk);
  if (workers === 1) {
    await startWorker();
  } else {
    let stopping = false;
    for (let i = 0; i < workers; i += 1) cluster.fork({ PEER_SIGNING_JWK: process.env.PEER_SIGNING_JWK });
    cluster.on('exit', (worker, code) => {
      if (!stopping) {
        console.error(`worker ${worker.process.pid} exited (${code}): stopping`);
        stopping = true;
        for (const w of Object.values(cluster.workers)) w?.kill('SIGTERM');
        process.exit(1);
      }
    });
    const stopAll = () => {
      stopping = true;
      for (const w of Object.values(cluster.workers)) w?.kill('SIGTERM');
      setTimeout(() => process.exit(0), 500).unref();
    };
    process.on('SIGTERM', stopAll);
    process.on('SIGINT', stopAll);
    console.log(`oidc-provider primary: ${workers} workers on http://${listen}`);
  }
} else {
  await startWorker();
}
