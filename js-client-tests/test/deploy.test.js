// The deployment files, read with a real YAML parser (no container engine runs on these machines).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import YAML from 'yaml';
import { ROOT } from '../lib/helpers.js';

test('docker-compose.yml: Redis, two gateway nodes on Redis, and a load balancer', () => {
  const doc = YAML.parse(readFileSync(path.join(ROOT, 'docker-compose.yml'), 'utf8'), { merge: true });
  const s = doc.services;
  assert.deepEqual(Object.keys(s).sort(), ['gateway1', 'gateway2', 'haproxy', 'redis']);
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

test('haproxy.cfg: sticky cookie and both nodes with health checks', () => {
  const cfg = readFileSync(path.join(ROOT, 'deploy', 'haproxy.cfg'), 'utf8');
  assert.match(cfg, /cookie RTG_NODE insert/);
  assert.match(cfg, /server node1 gateway1:8888 check cookie node1/);
  assert.match(cfg, /server node2 gateway2:8888 check cookie node2/);
  assert.match(cfg, /option httpchk GET \/health/);
  assert.match(cfg, /timeout tunnel/);
  assert.match(cfg, /option forwardfor/);
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
