// The deployment files, read with a real YAML parser (no container engine runs on these machines).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import YAML from 'yaml';
import { ROOT } from '../lib/helpers.js';

test('docker-compose.yml: Redis, two gateway nodes on Redis, and a load balancer', () => {
  const doc = YAML.parse(readFileSync(path.join(ROOT, 'docker-compose.yml'), 'utf8'), { merge: true });
  const s = doc.services;
  // Without a profile: one Redis, two nodes and the balancer; the `sentinel` profile adds the rest.
  const plain = Object.keys(s).filter((n) => !s[n].profiles).sort();
  assert.deepEqual(plain, ['gateway1', 'gateway2', 'haproxy', 'redis']);
  assert.match(s.redis.image, /^redis:7/);
  for (const name of ['gateway1', 'gateway2']) {
    const g = s[name];
    assert.equal(g.build, '.');
    assert.match(g.environment.REDIS_URL, /^redis:\/\/redis:6379/);
    assert.equal(g.environment.NODE_ID, name);
    assert.ok(g.environment.JWT_SECRET);
    assert.equal(g.depends_on.redis.condition, 'service_healthy');
    assert.equal(g.environment.TRUST_PROXY_HEADERS, 'true');
  }
  assert.notEqual(s.gateway1.environment.NODE_ID, s.gateway2.environment.NODE_ID);
  assert.ok(s.haproxy.ports.includes('8080:8080'));
  assert.ok(s.haproxy.volumes.some((v) => v.startsWith('./deploy/haproxy.cfg:')));
});

test('docker-compose.yml: the sentinel profile runs a replica, three sentinels and two nodes that find the master through them', () => {
  const doc = YAML.parse(readFileSync(path.join(ROOT, 'docker-compose.yml'), 'utf8'), { merge: true });
  const s = doc.services;
  const profiled = Object.keys(s).filter((n) => (s[n].profiles || []).includes('sentinel')).sort();
  assert.deepEqual(profiled, ['gateway-sentinel1', 'gateway-sentinel2', 'redis-replica', 'sentinel1', 'sentinel2', 'sentinel3']);
  assert.ok(s['redis-replica'].command.includes('--replicaof'));
  for (const name of ['sentinel1', 'sentinel2', 'sentinel3']) {
    assert.match(s[name].entrypoint.join(' '), /sentinel monitor mymaster redis 6379 2/);
  }
  for (const name of ['gateway-sentinel1', 'gateway-sentinel2']) {
    const env = s[name].environment;
    assert.equal(env.REDIS_URL, '', 'REDIS_URL unset: two modes at once stop the gateway');
    assert.equal(env.REDIS_SENTINELS, 'sentinel1:26379,sentinel2:26379,sentinel3:26379');
    assert.equal(env.REDIS_SENTINEL_MASTER, 'mymaster');
    assert.equal(env.NODE_ID, name);
  }
});

test('haproxy.cfg: sticky cookie and both nodes with health checks', () => {
  const cfg = readFileSync(path.join(ROOT, 'deploy', 'haproxy.cfg'), 'utf8');
  assert.match(cfg, /cookie RTG_NODE insert/);
  assert.match(cfg, /server node1 gateway1:8888 check cookie node1/);
  assert.match(cfg, /server node2 gateway2:8888 check cookie node2/);
  assert.match(cfg, /option httpchk GET \/health/);
  assert.match(cfg, /timeout tunnel/);
});

test('haproxy.cfg: X-Forwarded-For is overwritten with the client address, never appended to', () => {
  // The gateway (TRUST_PROXY_HEADERS=true) counts connections by the last X-Forwarded-For entry: the proxy
  // must replace whatever the client sent. `option forwardfor` appends, keeping the client's value.
  const lines = readFileSync(path.join(ROOT, 'deploy', 'haproxy.cfg'), 'utf8')
    .split('\n').map((l) => l.replace(/#.*$/, '').trim()).filter(Boolean);
  assert.ok(lines.includes('http-request set-header X-Forwarded-For %[src]'), lines.join('\n'));
  assert.ok(!lines.some((l) => /^option\s+forwardfor\b/.test(l)), 'option forwardfor is still there');
  assert.ok(!lines.some((l) => /^http-request\s+add-header\s+X-Forwarded-For\b/i.test(l)), 'X-Forwarded-For appended');
  // In the frontend every request passes through (a defaults section with http-request rules needs a name).
  const frontend = lines.slice(lines.findIndex((l) => /^frontend\b/.test(l)));
  const end = frontend.slice(1).findIndex((l) => /^(frontend|backend|defaults|listen|global)\b/.test(l));
  const section = end === -1 ? frontend : frontend.slice(0, end + 1);
  assert.ok(section.includes('http-request set-header X-Forwarded-For %[src]'), section.join('\n'));
});

test('Dockerfile: multi-stage, small runtime, non-root', () => {
  const lines = readFileSync(path.join(ROOT, 'Dockerfile'), 'utf8').split('\n');
  const froms = lines.filter((l) => /^FROM /.test(l));
  assert.equal(froms.length, 2);
  assert.match(froms[1], /slim/);
  const user = lines.find((l) => /^USER /.test(l));
  assert.ok(user && !/root|^USER 0/.test(user), user);
  assert.ok(lines.some((l) => /COPY --from=build .*realtime-gateway/.test(l)));
  assert.ok(lines.some((l) => /^ENTRYPOINT \["\/usr\/local\/bin\/realtime-gateway"\]/.test(l)));
});

test('Dockerfile: the build stage copies every workspace manifest (check-dockerfile.sh, dry run: no cargo)', () => {
  // The full check (cargo metadata and cargo check in the replayed tree) runs in scripts/test.sh.
  const out = execFileSync(path.join(ROOT, 'scripts', 'check-dockerfile.sh'), {
    env: { ...process.env, DRY_RUN: '1' },
    encoding: 'utf8',
  });
  assert.match(out, /COPY bench\/Cargo\.toml/);
  assert.match(out, /would run: cargo check .*-p realtime-gateway/);
  assert.match(out, /^ {2}\/src\/src\/main\.rs$/m);
  assert.match(out, /^ {2}\/src\/bench\/Cargo\.toml$/m);
});
