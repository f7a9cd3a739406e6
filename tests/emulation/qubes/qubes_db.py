"""Emulated Qubes dom0 (qubesd + the qvm-* tools) on a JSON file, for tests.

Plain Python, no Salt. The Salt double (_modules/qvm.py) calls `Qubesd`; tests
use `new_db` and the query helpers. Semantics follow qubes-core-admin v4.2.39
(R4.2) / v4.3.50 (R4.3) and qubes-core-admin-client v4.2.18 tools.
"""
from __future__ import annotations

import contextlib
import fcntl
import fnmatch
import json
import os
import re
import shlex
from typing import Any, Iterator

LABELS = ('red', 'orange', 'yellow', 'green', 'gray', 'blue', 'purple', 'black')
CLASSES = ('AppVM', 'TemplateVM', 'StandaloneVM', 'DispVM', 'AdminVM')


def __virtual__():
    """Salt also scans each module_dirs entry itself for execution modules."""
    return False, 'qubes_db is a plain test helper, not a Salt module'


class QubesException(Exception):
    """Mirrors qubesadmin.exc (names kept so tracebacks read the same)."""


class QubesValueError(QubesException, ValueError):
    pass


class QubesPropertyValueError(QubesValueError):
    pass


class QubesNoSuchPropertyError(QubesException, AttributeError):
    pass


class QubesVMNotStartedError(QubesException):
    """qubes.exc.QubesVMNotStartedError (a QubesVMError), as qubesadmin re-raises it."""


class QubesLabelNotFoundError(QubesException, KeyError):
    def __str__(self) -> str:
        return QubesException.__str__(self)


# Property table: name -> (type, default). Default forms: constant; ('tmpl', x)
# = template's value, else x; ('app', key) = global default; callables below.
_T = 'tmpl'
PROPS: dict[str, tuple[str, Any]] = {
    'name': ('str', None), 'qid': ('int', None), 'label': ('label', None),
    'autostart': ('bool', False), 'debug': ('bool', False),
    'default_user': ('str', (_T, 'user')), 'default_dispvm': ('vm', ('app', 'default_dispvm')),
    'management_dispvm': ('vm', (_T, ('app', 'management_dispvm'))),
    'guivm': ('vm', ('app', 'default_guivm')), 'audiovm': ('vm', ('app', 'default_audiovm')),
    'virt_mode': ('str', (_T, 'pvh')), 'backup_timestamp': ('int', None),
    'include_in_backups': ('bool', True), 'installed_by_rpm': ('bool', False),
    'ip': ('str', 'ip'), 'ip6': ('str', None), 'mac': ('str', '00:16:3e:5e:6c:00'),
    'kernel': ('str', (_T, ('app', 'default_kernel'))), 'kernelopts': ('str', (_T, '')),
    'maxmem': ('int', (_T, 4000)), 'memory': ('int', (_T, 400)), 'vcpus': ('int', (_T, 2)),
    'netvm': ('vm', ('app', 'default_netvm')), 'provides_network': ('bool', False),
    'qrexec_timeout': ('int', (_T, 60)), 'shutdown_timeout': ('int', (_T, 60)),
    'updateable': ('bool', 'updateable'), 'keyboard_layout': ('str', 'us++'),
    'template': ('vm', None), 'template_for_dispvms': ('bool', False),
    'auto_cleanup': ('bool', False), 'devices_denied': ('str', ''),
}
_QUBESVM = [p for p in PROPS if p not in ('template', 'template_for_dispvms', 'auto_cleanup',
                                           'devices_denied')]
_CLASS_PROPS = {
    'AppVM': _QUBESVM + ['template', 'template_for_dispvms'],
    'TemplateVM': _QUBESVM,
    'StandaloneVM': _QUBESVM + ['template_for_dispvms'],
    'DispVM': _QUBESVM + ['template', 'auto_cleanup'],
    'AdminVM': ['name', 'qid', 'label', 'default_dispvm', 'include_in_backups', 'updateable',
                'keyboard_layout'],
}
_READ_ONLY = ('name', 'qid', 'updateable', 'ip6')
_ALLOW_NONE = ('netvm', 'guivm', 'audiovm', 'default_dispvm', 'management_dispvm')


def _template_entry(name: str, release: str, repo: str = 'qubes-templates-itl') -> dict:
    return {'name': name, 'epoch': '0', 'version': release + '.0', 'release': '202506191712',
            'reponame': repo, 'size': '2147483648', 'buildtime': '2025-06-19 17:12:00',
            'license': 'GPLv3+', 'url': 'https://www.qubes-os.org',
            'summary': 'Qubes template for ' + name, 'description': 'Qubes template for ' + name}


def _domain(klass: str, qid: int, label: str, power: str = 'Halted', **prefs: Any) -> dict:
    return {'class': klass, 'qid': qid, 'power': power, 'prefs': dict(label=label, **prefs),
            'features': {}, 'tags': []}


def new_db(path: str, version: str = '4.2',
           installed: tuple[str, ...] = ('debian-13-xfce', 'debian-13-minimal'),
           available: tuple[str, ...] = ('debian-12-minimal', 'debian-12-xfce', 'debian-13-minimal',
                                         'debian-13-xfce', 'fedora-42-minimal', 'fedora-42-xfce'),
           ) -> dict:
    """Write a fresh emulated dom0 and return it. installed[0] is the default template."""
    repo = [_template_entry(n, version) for n in available]
    db: dict = {'release': version, 'journal': [], 'available': repo, 'app': {
        'default_template': installed[0], 'default_netvm': 'sys-firewall',
        'default_dispvm': 'default-dvm', 'management_dispvm': 'default-mgmt-dvm',
        'default_guivm': 'dom0', 'default_audiovm': 'dom0', 'default_kernel': '6.12.59-1.qubes.fc41'},
        'domains': {'dom0': _domain('AdminVM', 0, 'black', 'Running')}}
    doms = db['domains']
    for tpl in installed:
        doms[tpl] = _domain('TemplateVM', len(doms), 'black', installed_by_rpm=False)
        entry = next((e for e in repo if e['name'] == tpl), _template_entry(tpl, version))
        mark_template_managed(doms[tpl], entry)
    tpl = installed[0]
    doms['sys-net'] = _domain('AppVM', len(doms), 'red', 'Running', template=tpl, netvm=None,
                              provides_network=True, autostart=True, virt_mode='hvm')
    doms['sys-firewall'] = _domain('AppVM', len(doms), 'green', 'Running', template=tpl,
                                   netvm='sys-net', provides_network=True, autostart=True,
                                   memory=500)
    for name in ('sys-net', 'sys-firewall'):
        doms[name]['features']['servicevm'] = '1'
    doms['default-dvm'] = _domain('AppVM', len(doms), 'red', template=tpl,
                                  template_for_dispvms=True)
    doms['default-mgmt-dvm'] = _domain('AppVM', len(doms), 'black', template=tpl, netvm=None,
                                       template_for_dispvms=True)
    doms['default-mgmt-dvm']['features']['internal'] = '1'
    save(path, db)
    return db


# qvm-template's JSON field order ('size' goes after 'reponame').
_TEMPLATE_KEYS = ('name', 'epoch', 'version', 'release', 'reponame', 'buildtime', 'installtime',
                  'license', 'url', 'summary', 'description')


def mark_template_managed(dom: dict, entry: dict) -> None:
    """What qvm-template install records: features template-* (name == qube name)."""
    for key in _TEMPLATE_KEYS:
        dom['features']['template-' + key] = entry.get(key, '2025-07-01 10:00:00')


def load(path: str) -> dict:
    with open(path, encoding='utf-8') as fh:
        return json.load(fh)


def save(path: str, db: dict) -> None:
    tmp = path + '.tmp'
    with open(tmp, 'w', encoding='utf-8') as fh:
        json.dump(db, fh, indent=1, sort_keys=False)
    os.replace(tmp, path)


@contextlib.contextmanager
def transaction(path: str) -> Iterator[dict]:
    """Load under an exclusive lock, yield, save (even if nothing changed)."""
    with open(path + '.lock', 'a') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        db = load(path)
        yield db
        save(path, db)


# ---- read helpers for tests ------------------------------------------------

def exists(path: str, name: str) -> bool:
    return name in load(path)['domains']


def pref(path: str, name: str, prop: str) -> Any:
    """Effective value (default resolved); VMs and labels as names."""
    return get_property(load(path), name, prop)


def is_default(path: str, name: str, prop: str) -> bool:
    return property_is_default(load(path), name, prop)


def features(path: str, name: str) -> dict[str, str]:
    return dict(load(path)['domains'][name]['features'])


def services(path: str, name: str) -> dict[str, str]:
    return {k[len('service.'):]: v for k, v in features(path, name).items()
            if k.startswith('service.')}


def tags(path: str, name: str) -> list[str]:
    return list(load(path)['domains'][name]['tags'])


def power(path: str, name: str) -> str:
    return load(path)['domains'][name]['power']


def journal(path: str) -> list[list]:
    """Every write since new_db: ['set', vm, prop, value], ['tool', argv...], ..."""
    return load(path)['journal']


# ---- qubesd semantics on a loaded db ----------------------------------------

def _dom(db: dict, name: str) -> dict:
    return db['domains'][name]


def _props(db: dict, name: str) -> list[str]:
    props = _CLASS_PROPS[_dom(db, name)['class']]
    if db['release'] != '4.2' and _dom(db, name)['class'] != 'AdminVM':
        props = props + ['devices_denied']
    return props


def _check_prop(db: dict, name: str, prop: str) -> None:
    if prop not in _props(db, name):
        raise QubesNoSuchPropertyError('Invalid property {!r} of {!s}'.format(prop, name))


def property_is_default(db: dict, name: str, prop: str) -> bool:
    _check_prop(db, name, prop)
    return prop not in ('name', 'qid') and prop not in _dom(db, name)['prefs']


def _resolve(db: dict, name: str, prop: str, default: Any) -> Any:
    if isinstance(default, tuple) and default[0] == 'app':
        return db['app'][default[1]]
    if isinstance(default, tuple) and default[0] == _T:
        tpl = _dom(db, name)['prefs'].get('template')
        return get_property(db, tpl, prop) if tpl else _resolve(db, name, prop, default[1])
    if default == 'updateable':
        return 'template' not in _CLASS_PROPS[_dom(db, name)['class']]
    if default == 'ip':
        networked = get_property(db, name, 'netvm') or get_property(db, name, 'provides_network')
        return '10.137.0.{}'.format(_dom(db, name)['qid']) if networked else None
    return default


def get_property(db: dict, name: str, prop: str) -> Any:
    _check_prop(db, name, prop)
    dom = _dom(db, name)
    if prop == 'name':
        return name
    if prop == 'qid':
        return dom['qid']
    if prop in dom['prefs']:
        return dom['prefs'][prop]
    if prop == 'netvm' and dom['class'] == 'TemplateVM':
        return None
    if prop == 'include_in_backups' and dom['class'] == 'DispVM':
        return False
    default = PROPS[prop][1]
    if default is None and prop in ('label', 'template'):
        raise QubesException('property {!r} not set'.format(prop))
    return _resolve(db, name, prop, default)


def _to_bool(text: str) -> bool:
    if text.lower() in ('0', 'no', 'false', 'off'):
        return False
    if text.lower() in ('1', 'yes', 'true', 'on'):
        return True
    raise QubesValueError('Invalid literal for boolean property: {!r}'.format(text))


def connected_vms(db: dict, name: str) -> list[str]:
    return [n for n, d in db['domains'].items() if d['class'] != 'AdminVM'
            and get_property(db, n, 'netvm') == name]


def vms_connected_to(db: dict, name: str) -> set[str]:
    """Every qube whose network goes through `name`, directly or not
    (qubes/app.py VMCollection.get_vms_connected_to)."""
    found: set[str] = set()
    todo = [name]
    while todo:
        for vm in connected_vms(db, todo.pop()):
            if vm not in found:
                found.add(vm)
                todo.append(vm)
    return found


def _is_running(db: dict, name: str) -> bool:
    return _dom(db, name)['power'] != 'Halted'


def _check_netvm(db: dict, name: str, netvm: str | None) -> None:
    """What qubes-core-admin checks before a qube's netvm changes (v4.2.39 and v4.3.50,
    qubes/vm/mix/net.py): `_setter_netvm` refuses a loop through any qube downstream
    (transitively), and `on_property_pre_set_netvm` (also fired by a reset to the default)
    refuses to attach a running qube to a netvm that is not running."""
    if netvm is None:
        return
    if netvm == name or netvm in vms_connected_to(db, name):
        raise QubesValueError('Loops in network are unsupported')
    if _is_running(db, name) and not _is_running(db, netvm):
        raise QubesVMNotStartedError('Cannot dynamically attach to stopped qube {!s}'.format(netvm))


def _convert(db: dict, name: str, prop: str, raw: Any) -> Any:
    """qubesadmin sends str(value) ('' for None); qubesd parses it per type."""
    text = '' if raw is None else str(raw)
    kind = PROPS[prop][0]
    bad = 'Invalid value {!r} for property {!r} of {!r}'.format(text, prop, name)
    if prop in _READ_ONLY:
        raise QubesPropertyValueError('Property {!r} is read-only'.format(prop))
    if kind == 'bool':
        return _to_bool(text)
    if kind == 'int':
        if not re.fullmatch(r'-?\d+', text.strip()):
            raise QubesPropertyValueError(bad)
        value = int(text)
        if value < 0 or (value == 0 and prop != 'maxmem' and prop != 'backup_timestamp'):
            raise QubesPropertyValueError(bad)
        return value
    if kind == 'label':
        if text not in LABELS:
            raise QubesLabelNotFoundError('Label does not exist: {}'.format(text))
        return text
    if kind == 'vm':
        if text == '':
            if prop in _ALLOW_NONE:
                return None
            raise QubesPropertyValueError(bad)
        if text not in db['domains']:
            raise QubesPropertyValueError(
                "Can't set {} to non-existing qube {}".format(prop, text))
        if prop == 'template' and _dom(db, text)['class'] != 'TemplateVM':
            raise QubesPropertyValueError(
                'wrong VM class: domains[{!r}] is of type {} and not TemplateVM'.format(
                    text, _dom(db, text)['class']))
        if prop == 'netvm':
            if not get_property(db, text, 'provides_network'):
                raise QubesValueError('The {!s} qube does not provide network'.format(text))
            _check_netvm(db, name, text)
        return text
    if prop == 'virt_mode' and text.lower() not in ('hvm', 'pv', 'pvh'):
        raise QubesPropertyValueError(bad)
    return text.lower() if prop == 'virt_mode' else text


def _servicevm(db: dict, name: str) -> None:
    """core-admin ext/core_features: servicevm follows provides_network (R4.1+)."""
    feats = _dom(db, name)['features']
    if get_property(db, name, 'provides_network'):
        feats['servicevm'] = '1'
    else:
        feats.pop('servicevm', None)


def set_property(db: dict, name: str, prop: str, raw: Any) -> None:
    _check_prop(db, name, prop)
    value = _convert(db, name, prop, raw)
    if prop == 'provides_network' and not value and connected_vms(db, name):
        raise QubesValueError("The qube is still used by other qubes, change theirs 'netvm' first")
    _dom(db, name)['prefs'][prop] = value
    db['journal'].append(['set', name, prop, value])
    if prop == 'provides_network':
        _servicevm(db, name)


def reset_property(db: dict, name: str, prop: str) -> None:
    _check_prop(db, name, prop)
    if prop in ('label', 'template') + _READ_ONLY:
        raise QubesPropertyValueError('Property {!r} has no default'.format(prop))
    if prop == 'netvm' and not property_is_default(db, name, prop):
        kept = _dom(db, name)['prefs'].pop(prop)
        default = get_property(db, name, prop)
        _dom(db, name)['prefs'][prop] = kept
        _check_netvm(db, name, default)
    _dom(db, name)['prefs'].pop(prop, None)
    db['journal'].append(['reset', name, prop])
    if prop == 'provides_network':
        _servicevm(db, name)


def feature_value(value: Any) -> str:
    """qubesadmin.features: True -> '1', False -> '', anything else str()."""
    if isinstance(value, bool):
        return '1' if value else ''
    return str(value)


class Qubesd:
    """The admin API as the Salt double sees it: one locked transaction per call."""

    def __init__(self, path: str) -> None:
        self.path = path

    def _tx(self) -> contextlib.AbstractContextManager[dict]:
        return transaction(self.path)

    def exists(self, name: str) -> bool:
        return exists(self.path, name)

    def power_state(self, name: str) -> str:
        return power(self.path, name)

    def property_is_default(self, name: str, prop: str) -> bool:
        return property_is_default(load(self.path), name, prop)

    def get(self, name: str, prop: str) -> Any:
        return get_property(load(self.path), name, prop)

    def set(self, name: str, prop: str, value: Any) -> None:
        with self._tx() as db:
            set_property(db, name, prop, value)

    def reset(self, name: str, prop: str) -> None:
        with self._tx() as db:
            reset_property(db, name, prop)

    def features(self, name: str) -> dict[str, str]:
        return features(self.path, name)

    def set_feature(self, name: str, key: str, value: Any) -> None:
        with self._tx() as db:
            _dom(db, name)['features'][key] = feature_value(value)
            db['journal'].append(['feature', name, key, feature_value(value)])

    def del_feature(self, name: str, key: str) -> None:
        with self._tx() as db:
            if _dom(db, name)['features'].pop(key, None) is None:
                raise QubesException('Feature not set for domain {}: {}'.format(name, key))
            db['journal'].append(['feature-del', name, key])

    def tags(self, name: str) -> list[str]:
        return tags(self.path, name)

    def tag(self, name: str, tag: str, add: bool) -> None:
        with self._tx() as db:
            current = _dom(db, name)['tags']
            if add and tag not in current:
                current.append(tag)
            elif not add and tag in current:
                current.remove(tag)
            db['journal'].append(['tag-add' if add else 'tag-del', name, tag])

    def run_tool(self, cmd: str) -> dict:
        """Run an emulated qvm-* command line; returns cmd.run_all's keys."""
        argv = shlex.split(cmd)
        tool = os.path.basename(argv[0])
        if tool in ('qvm-check',) or argv[1:2] == ['info']:
            return _TOOLS[tool](load(self.path), argv[1:])
        with self._tx() as db:
            ret = _TOOLS[tool](db, argv[1:])
            db['journal'].append(['tool'] + argv)
            return ret


# ---- qvm-* tools --------------------------------------------------------------
_COMMON_OPTS = ('--verbose', '-v', '--quiet', '-q', '--force-root')


def _res(retcode: int = 0, stdout: str = '', stderr: str = '') -> dict:
    return {'retcode': retcode, 'stdout': stdout, 'stderr': stderr}


def _usage_error(tool: str, message: str) -> dict:
    return _res(2, stderr='{}: error: {}\n'.format(tool, message))


def _split(tool: str, args: list[str], flags: tuple[str, ...], valued: tuple[str, ...] = ()
           ) -> tuple[dict[str, Any], list[str], dict | None]:
    opts: dict[str, Any] = {}
    pos: list[str] = []
    unknown: list[str] = []
    it = iter(args)
    for arg in it:
        key, _, val = arg.partition('=')
        if key in valued:
            opts.setdefault(key, []).append(val if _ else next(it, ''))
        elif arg in flags + _COMMON_OPTS:
            opts[arg] = True
        elif arg.startswith('-'):
            unknown.append(arg)
        else:
            pos.append(arg)
    err = _usage_error(tool, 'unrecognized arguments: ' + ' '.join(unknown)) if unknown else None
    return opts, pos, err


def _qvm_check(db: dict, args: list[str]) -> dict:
    opts, names, err = _split('qvm-check', args, ('--running', '--paused', '--template',
                                                  '--networked'))
    if err:
        return err
    doms = db['domains']
    valid = [n for n in names if n in doms]
    if opts.get('--template'):
        ok = [n for n in valid if doms[n]['class'] == 'TemplateVM']
        lines = ['{}: template'.format(n) for n in sorted(ok)] or ['None of qubes: template']
    else:
        ok = valid
        lines = ['{}: exists'.format(n) for n in sorted(ok)]
    lines += ['{}: non-existent!'.format(n) for n in names if n not in doms]
    retcode = 0 if len(ok) == len(names) else 3 if ok and valid == names else 1
    quiet = opts.get('--quiet') or opts.get('-q')
    return _res(retcode, stderr='' if quiet else ''.join('qvm-check: ' + l + '\n' for l in lines))


def _new_domain(db: dict, name: str, klass: str, label: str) -> dict:
    qid = max(d['qid'] for d in db['domains'].values()) + 1
    dom = _domain(klass, qid, label)
    dom['tags'] = ['created-by-dom0']
    db['domains'][name] = dom
    return dom


def _qvm_create(db: dict, args: list[str]) -> dict:
    opts, pos, err = _split('qvm-create', args, (), ('--class', '--template', '--label',
                                                      '--property', '--root-copy-from',
                                                      '--root-move-from'))
    if err:
        return err
    klass = opts.get('--class', ['AppVM'])[-1]
    label = opts.get('--label', [None])[-1]
    template = opts.get('--template', [None])[-1]
    root = (opts.get('--root-copy-from') or opts.get('--root-move-from') or [None])[-1]
    if label is None:
        return _usage_error('qvm-create', '--label option is mandatory')
    if not pos:
        return _usage_error('qvm-create', 'VMNAME is mandatory')
    if root and not os.path.exists(root):
        return _usage_error('qvm-create', 'File pointed by --root-copy-from/--root-move-from '
                                          'does not exist')
    if label not in LABELS:
        return _usage_error('qvm-create', 'no such label: {!r}; available: {}'.format(
            label, ', '.join(LABELS)))
    if klass not in CLASSES[:4]:
        return _usage_error('qvm-create', 'no such domain class: {!r}'.format(klass))
    name = pos[0]
    if name in db['domains']:
        return _res(1, stderr='qvm-create: Error creating VM: VM {} already exists\n'.format(name))
    if klass in ('AppVM', 'DispVM'):
        template = template or db['app']['default_template']
    elif template and klass == 'StandaloneVM':
        if template not in db['domains']:
            return _res(1, stderr='qvm-create: Error creating VM: no such qube {}\n'.format(template))
        return _clone(db, template, name, 'StandaloneVM')
    elif template:
        return _res(1, stderr='qvm-create: Error creating VM: {} cannot have a template\n'.format(
            klass))
    if template is not None:
        try:
            _convert(db, name, 'template', template)
        except QubesException as exc:
            return _res(1, stderr='qvm-create: Error creating VM: {}\n'.format(exc))
    dom = _new_domain(db, name, klass, label)
    if template is not None:
        dom['prefs']['template'] = template
    errors = []
    for prop in opts.get('--property', []):
        key, _, value = prop.partition('=')
        try:
            set_property(db, name, key, value)
        except QubesException as exc:
            errors.append('qvm-create: Error setting property {} (but VM created): {!s}'.format(
                key, exc))
    return _res(2 if errors else 0, stderr=''.join(e + '\n' for e in errors))


def _clone(db: dict, src: str, dst: str, klass: str | None = None) -> dict:
    source = db['domains'][src]
    dom = _new_domain(db, dst, klass or source['class'], source['prefs']['label'])
    skip = ('template', 'installed_by_rpm') if klass == 'StandaloneVM' else ('installed_by_rpm',)
    dom['prefs'].update({k: v for k, v in source['prefs'].items()
                         if k not in skip and k in _props(db, dst)})
    dom['tags'] += [t for t in source['tags'] if not t.startswith('created-by-')]
    dom['features'] = dict(source['features'])
    return _res()


def _qvm_clone(db: dict, args: list[str]) -> dict:
    opts, pos, err = _split('qvm-clone', args, ('--ignore-errors',), ('--class', '-C', '--pool',
                                                                       '-P'))
    if err:
        return err
    if len(pos) != 2:
        return _usage_error('qvm-clone', 'the following arguments are required: VMNAME, NEW_NAME')
    if pos[0] not in db['domains']:
        return _usage_error('qvm-clone', 'no such domain: {!r}'.format(pos[0]))
    if pos[1] in db['domains']:
        return _res(1, stderr='qvm-clone: error: VM {} already exists\n'.format(pos[1]))
    return _clone(db, pos[0], pos[1])


def _named(db: dict, tool: str, args: list[str], flags: tuple[str, ...]
           ) -> tuple[list[str], dict | None]:
    _opts, pos, err = _split(tool, args, flags + ('--all',), ('--exclude',))
    missing = [n for n in pos if n not in db['domains']]
    if missing and not err:
        err = _usage_error(tool, 'no such domain: {!r}'.format(missing[0]))
    return pos, err


def _power_tool(db: dict, args: list[str], tool: str, flags: tuple[str, ...], state: str) -> dict:
    names, err = _named(db, tool, args, flags)
    if err:
        return err
    for name in names:
        chain, vm = [], name
        while vm and state == 'Running' and vm not in chain:
            chain.append(vm)
            vm = get_property(db, vm, 'netvm') if db['domains'][vm]['class'] != 'AdminVM' else None
        for vm in chain or [name]:
            db['domains'][vm]['power'] = state
    return _res()


def _qvm_remove(db: dict, args: list[str]) -> dict:
    names, err = _named(db, 'qvm-remove', args, ('--force', '-f'))
    if err:
        return err
    for name in names:
        users = [n for n, d in db['domains'].items() if n != name and name in (
            d['prefs'].get('template'), d['prefs'].get('netvm'))]
        if users:
            return _res(1, stderr='qvm-remove: error: Domain is in use: {!r}; details: {}\n'.format(
                name, ', '.join(users)))
        del db['domains'][name]
    return _res()


def _qvm_template(db: dict, args: list[str]) -> dict:
    cmd, rest = args[0], args[1:]
    opts, specs, err = _split('qvm-template', rest, ('--installed', '--machine-readable-json',
                                                     '--yes'), ('--repoid', '--pool'))
    if err:
        return err
    doms = db['domains']
    if cmd == 'info':
        found = [dict({k: d['features']['template-' + k] for k in _TEMPLATE_KEYS[:5]},
                      size='2147483648', **{k: d['features']['template-' + k]
                                            for k in _TEMPLATE_KEYS[5:]})
                 for n, d in doms.items()
                 if d['features'].get('template-name') == n and (not specs or n in specs)]
        if not found:
            return _usage_error('qvm-template', 'No matching templates to list')
        return _res(stdout=json.dumps({'installed': found}) + '\n')
    if cmd != 'install':
        return _usage_error('qvm-template', 'emulation supports only install and info')
    repos = opts.get('--repoid', ['*'])
    stderr = ''
    for spec in specs:
        entry = next((e for e in db['available'] if any(fnmatch.fnmatch(e['reponame'], r)
                                                        for r in repos)
                      and spec in (e['name'], '{name}-{version}'.format(**e),
                                   '{name}-{version}-{release}'.format(**e),
                                   '{name}-{epoch}:{version}-{release}'.format(**e))), None)
        if entry is None:
            return _usage_error('qvm-template', "Template '{}' not found.".format(spec))
        if entry['name'] in doms:
            stderr += ("Template '{}' already installed, skipping... (You may want to use the "
                       "{{reinstall,upgrade,downgrade}} operations.)\n".format(entry['name']))
            continue
        dom = _new_domain(db, entry['name'], 'TemplateVM', 'black')
        dom['prefs']['installed_by_rpm'] = False
        mark_template_managed(dom, entry)
        stderr += "Installing template '{}'...\n".format(entry['name'])
    return _res(stderr=stderr)


_TOOLS = {
    'qvm-check': _qvm_check,
    'qvm-create': _qvm_create,
    'qvm-clone': _qvm_clone,
    'qvm-remove': _qvm_remove,
    'qvm-start': lambda db, a: _power_tool(db, a, 'qvm-start', (
        '--skip-if-running', '--install-windows-tools'), 'Running'),
    'qvm-shutdown': lambda db, a: _power_tool(db, a, 'qvm-shutdown', (
        '--wait', '--force', '--dry-run'), 'Halted'),
    'qvm-kill': lambda db, a: _power_tool(db, a, 'qvm-kill', (), 'Halted'),
    'qvm-template': _qvm_template,
}
